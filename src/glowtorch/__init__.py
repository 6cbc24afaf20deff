"""glowtorch: Glow (Kingma & Dhariwal 2018), generative flow with invertible 1x1 convolutions, in PyTorch."""

from .allocator import keep_freed_memory
from .checkpoint import CheckpointError, load_model, load_pretrained, save_model
from .context import context_from_lowres, lowres_images
from .likelihood import bits_per_dim, nll_bits_per_dim
from .model import ComputeConfig, Glow, GlowConfig, NotInitializedError
from .preprocess import dequantize, to_uint8
from .pretrained import pretrained_names

__all__ = [
    "CheckpointError",
    "ComputeConfig",
    "Glow",
    "GlowConfig",
    "NotInitializedError",
    "bits_per_dim",
    "context_from_lowres",
    "dequantize",
    "keep_freed_memory",
    "load_model",
    "load_pretrained",
    "lowres_images",
    "nll_bits_per_dim",
    "pretrained_names",
    "save_model",
    "to_uint8",
]

__version__ = "0.1.0"
