"""``glowtorch demo``: explore a model's latent space in the browser (Gradio, served locally, offline).

``Explorer`` (``explorer``) holds what the page computes, with no Gradio in it; ``inputs`` brings drawings
and uploads to the model's input; ``page`` lays the Explorer out as tabs and serves it. The model is loaded
once; the test set's scores and the attribute directions come with a shipped model, or are computed once
from ``--dataset`` and cached in the run or model folder (``glowtorch.reference``).
"""

from .explorer import MAX_SAMPLES, Explorer, Reading
from .inputs import DISPLAY, MAX_UPLOAD_PIXELS, DemoError, prepare_image, show
from .page import MAX_SLIDERS, build_app, launch

__all__ = [
    "DISPLAY",
    "MAX_SAMPLES",
    "MAX_SLIDERS",
    "MAX_UPLOAD_PIXELS",
    "DemoError",
    "Explorer",
    "Reading",
    "build_app",
    "launch",
    "prepare_image",
    "show",
]
