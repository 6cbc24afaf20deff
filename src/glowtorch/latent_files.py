"""Latent and direction files: safetensors files of latents (one tensor per level) or attribute directions,
tied to the model they were made with by a fingerprint of its config and weights."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .files import atomic_write
from .model import Glow
from .pretrained import is_pretrained

__all__ = [
    "LatentFile",
    "load_latents",
    "model_fingerprint",
    "read_directions",
    "read_latents",
    "save_latents",
    "write_directions",
    "write_latents",
]


# Config fields added after files were first fingerprinted: at these values they leave the hash as it was,
# so latent and direction files written before still match their model.
_LATER_FIELDS = {
    "class_prior": "channel",
    "coupling_network": "actnorm",
    "zero_conv_padding": 0.0,
    "condition": "",
    "context_features": 32,
    "dequantization": "uniform",
    "dequantizer_channels": 16,
    "dequantizer_depth": 2,
}


def model_fingerprint(model: Glow) -> str:
    """A short hash of the model's config and weights: ties latent and direction files to their model."""
    config = {k: v for k, v in model.config.to_dict().items() if _LATER_FIELDS.get(k, object()) != v}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def save_latents(path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> Path:
    """Writes named tensors with string metadata to a safetensors file, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    data = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(data, str(tmp), metadata=metadata))
    return path


def load_latents(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Reads a file written by ``save_latents``: (tensors, metadata)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is not a readable safetensors file ({error})") from None


# Latent and direction files: safetensors with tensors z0, z1, ... (finest level first) and string
# metadata naming the kind of file ("glowtorch": "latents" / "directions") and the model's fingerprint.
def _levels(tensors: dict[str, Tensor]) -> list[Tensor]:
    return [tensors[f"z{i}"] for i in range(sum(k.startswith("z") and k[1:].isdigit() for k in tensors))]


def _check_kind(model: Glow, metadata: dict[str, str], path: str | Path, kind: str) -> None:
    if metadata.get("glowtorch") != kind:
        raise ValueError(f"{path} is not a glowtorch {kind} file")
    if metadata.get("model_fingerprint") != model_fingerprint(model):
        raise ValueError(f"{path} was made with another model; recompute it with this checkpoint")


@dataclass(frozen=True)
class LatentFile:
    """What ``read_latents`` returns: ``zs`` (finest level first), labels ``y`` or None, the images'
    ``names``, the ``checkpoint`` they were encoded with (or None), the model's ``fingerprint`` and, for
    conditional models, the ``context`` ``(B, C_c, h, w)`` (model space) they were encoded under."""

    zs: list[Tensor]
    y: Tensor | None
    names: list[str]
    checkpoint: str | None
    fingerprint: str | None
    context: Tensor | None = None

    def check_model(self, model: Glow, path: str | Path) -> None:
        """``ValueError`` unless ``model`` is the model these latents were encoded with."""
        _check_kind(model, {"glowtorch": "latents", "model_fingerprint": self.fingerprint or ""}, path, "latents")


def write_latents(
    path: str | Path,
    model: Glow,
    zs: Sequence[Tensor],
    y: Tensor | None = None,
    names: Sequence[str] | None = None,
    checkpoint: str | Path | None = None,
    context: Tensor | None = None,
) -> Path:
    """Writes the latents of ``len(zs[0])`` images with their labels, names, context and model (atomically)."""
    tensors = {f"z{i}": z for i, z in enumerate(zs)}
    if y is not None:
        tensors["y"] = y
    if context is not None:
        tensors["context"] = context
    metadata = {
        "glowtorch": "latents",
        "model_fingerprint": model_fingerprint(model),
        # float64 when encode_images had to recompute images whose float32 round trip was not exact
        "precision": str(zs[0].dtype).removeprefix("torch."),
    }
    if names is not None:
        metadata["files"] = json.dumps(list(names))
    if checkpoint is not None:  # a shipped model keeps its name, which holds wherever the package is installed
        metadata["checkpoint"] = checkpoint if is_pretrained(checkpoint) else str(Path(checkpoint).resolve())
    return save_latents(path, tensors, metadata)


def read_latents(path: str | Path) -> LatentFile:
    """Reads a file written by ``write_latents`` (or ``glowtorch encode``). The images' names are data
    from the file: each is reduced to a safe file name (no folders), and images without a usable or
    unique name are named by their index, so there is one name per image."""
    tensors, metadata = load_latents(path)
    if metadata.get("glowtorch") != "latents":
        raise ValueError(f"{path} is not a glowtorch latents file")
    zs = _levels(tensors)
    if not zs:
        raise ValueError(f"{path} holds no latents")
    try:
        names = json.loads(metadata.get("files", "[]"))
    except json.JSONDecodeError:
        names = []
    names = _safe_names(names if isinstance(names, list) else [], len(zs[0]))
    checkpoint, fingerprint = metadata.get("checkpoint"), metadata.get("model_fingerprint")
    return LatentFile(zs, tensors.get("y"), names, checkpoint, fingerprint, tensors.get("context"))


def _safe_names(names: list, count: int) -> list[str]:
    """``count`` distinct file names: each given name's last path component, with characters other than
    letters, digits, ``-``, ``_`` and ``.`` replaced; ``image_NNNN`` where that leaves nothing."""
    safe: list[str] = []
    for index in range(count):
        raw = names[index] if index < len(names) and isinstance(names[index], str) else ""
        name = re.sub(r"[^\w.-]", "_", raw.replace("\\", "/").rsplit("/", 1)[-1]).strip("._")
        if not name or name in safe:
            name = f"image_{index:04d}"
        safe.append(name)
    return safe


def write_directions(
    path: str | Path, model: Glow, directions: Sequence[Tensor], attributes: Sequence[str], dataset: str
) -> Path:
    """Writes attribute directions (a list over levels of ``(A, *latent_shape)``) with their names."""
    metadata = {
        "glowtorch": "directions",
        "model_fingerprint": model_fingerprint(model),
        "attributes": json.dumps(list(attributes)),
        "dataset": dataset,
    }
    return save_latents(path, {f"z{i}": d for i, d in enumerate(directions)}, metadata)


def read_directions(path: str | Path, model: Glow) -> dict[str, list[Tensor]]:
    """The directions of a file written by ``write_directions`` for ``model``: ``{attribute: [per level]}``.

    Everything in the file is checked before it is used, since a file can come from anyone: distinct
    attribute names, one ``(A, *latent_shape)`` tensor per level of the model, floating point and finite."""
    tensors, metadata = load_latents(path)
    _check_kind(model, metadata, path, "directions")
    try:
        attributes = json.loads(metadata.get("attributes", ""))
    except json.JSONDecodeError:
        attributes = None
    if (
        not isinstance(attributes, list)
        or not attributes
        or not all(isinstance(name, str) and name for name in attributes)
        or len(set(attributes)) != len(attributes)
    ):
        raise ValueError(f"{path} does not name its attributes (a list of distinct names); recompute it")
    levels = _levels(tensors)
    expected = [(len(attributes), *shape) for shape in model.latent_shapes]
    found = [tuple(d.shape) for d in levels]
    if found != expected:
        raise ValueError(f"{path} holds directions of shapes {found}, where this model needs {expected}")
    if not all(d.is_floating_point() and bool(torch.isfinite(d).all()) for d in levels):
        raise ValueError(f"{path} holds directions that are not finite numbers; recompute it")
    return {name: [d[i] for d in levels] for i, name in enumerate(attributes)}
