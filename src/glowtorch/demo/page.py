"""The page: Sample, Draw or upload, Interpolate, Edit and (with a super-resolution model) Super-resolve tabs
around one ``Explorer`` (Gradio), and ``launch``, which serves it offline."""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..context import enlarge
from .explorer import Explorer
from .inputs import DemoError, show

__all__ = ["LOCAL_HOSTS", "MAX_SLIDERS", "build_app", "launch"]

MAX_SLIDERS = 40
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")  # addresses only this machine can reach
CACHE_SECONDS = 3600  # pictures the page made are removed after an hour (and all of them when it stops)
OFFLINE_THEME_FONTS = (["ui-sans-serif", "system-ui", "sans-serif"], ["ui-monospace", "monospace"])


def _guarded(function, outputs: int):
    """``function``'s results plus an empty message, or unchanged outputs and a message: a ``DemoError``'s
    (bad input), or for anything else a line saying that the server failed (its traceback goes to the
    server's log). Either way the app keeps serving."""
    import gradio as gr

    def run(*args):
        try:
            result = function(*args)
        except DemoError as error:
            return (*[gr.update() for _ in range(outputs)], f"**{error}**")
        except Exception as error:  # a bug: said in the page, the traceback in the server's log
            traceback.print_exc(file=sys.stderr)
            message = f"**the server failed on this input ({type(error).__name__}); the page keeps serving**"
            return (*[gr.update() for _ in range(outputs)], message)
        result = result if isinstance(result, tuple) else (result,)
        return (*result, "")

    return run


def _discard_upload(path, uploads: Path | None) -> None:
    """Removes an uploaded file once read (and Gradio's folder for it, when that is then empty), but only
    inside ``uploads``, the private folder ``launch`` made for this server."""
    if uploads is None or path is None:
        return
    path = Path(path if isinstance(path, (str, Path)) else getattr(path, "name", ""))
    with suppress(OSError, ValueError):
        if path.is_file() and not path.is_symlink() and path.resolve().is_relative_to(uploads.resolve()):
            path.unlink()
            if path.parent.resolve() != uploads.resolve():
                path.parent.rmdir()  # fails, harmlessly, when something else is in it


class _Page:
    """What the tabs share: the explorer, the class dropdown, the chosen image and the test images to pick."""

    def __init__(self, explorer: Explorer, label, current, uploads: Path | None = None) -> None:
        self.explorer, self.label, self.current = explorer, label, current
        self.uploads = uploads
        self.examples = explorer.examples
        self.classes = list(range(explorer.model.config.num_classes))
        self.picks = [f"test image {i}" for i in range(0 if self.examples is None else len(self.examples))]

    def image_of(self, state) -> Tensor:
        if state is None:
            raise DemoError("no image chosen yet: draw, upload or pick one in the Draw or upload tab")
        return torch.from_numpy(np.asarray(state, dtype=np.uint8))

    def pick(self, choice: str | None) -> Tensor:
        if not choice or choice not in self.picks:
            raise DemoError("pick a test image")
        return self.examples[self.picks.index(choice)]


def _sample_tab(page: _Page, app) -> None:
    import gradio as gr

    explorer = page.explorer
    with gr.Tab("Sample"):
        with gr.Row():
            temperature = gr.Slider(0, 1, value=0.7, step=0.05, label="temperature", elem_id="temperature")
            seed = gr.Number(0, precision=0, label="seed", elem_id="seed")
        per_level = gr.Textbox(label=f"per-level temperatures ({explorer.levels} values, finest first; "
                               "overrides the slider when given)", elem_id="per-level")  # fmt: skip
        sample_button = gr.Button("Sample", variant="primary", elem_id="sample")
        samples = gr.Image(label="samples", type="numpy", format="png", elem_id="samples", interactive=False)
        sample_message = gr.Markdown(elem_id="sample-message")

    def do_sample(t, s, levels, y):
        return show(explorer.sample(t, s, y, 32, levels), columns=8)

    sample_inputs = [temperature, seed, per_level, page.label]
    sample_button.click(_guarded(do_sample, 1), sample_inputs, [samples, sample_message])
    app.load(_guarded(do_sample, 1), sample_inputs, [samples, sample_message])


def _read_tab(page: _Page) -> None:
    import gradio as gr

    explorer = page.explorer
    with gr.Tab("Draw or upload"):
        with gr.Row():
            pad = gr.Sketchpad(label="draw a digit", type="numpy", image_mode="RGBA", canvas_size=(280, 280),
                               elem_id="pad")  # fmt: skip
            # A file, not an image component: what is not an image reaches prepare_image, which says so.
            upload = gr.File(label="or upload an image (PNG, JPEG, ...)", type="filepath", elem_id="upload")
        with gr.Row():
            read_button = gr.Button("Read the drawing", variant="primary", elem_id="read")
            picked = gr.Dropdown(page.picks, label="or pick a test image", elem_id="pick")
        with gr.Row():
            shown = gr.Image(label="model input", format="png", interactive=False, elem_id="input")
            reconstruction = gr.Image(label="exact reconstruction", format="png", interactive=False,
                                      elem_id="reconstruction")  # fmt: skip
            histogram = gr.Image(label="its bits/dim among the test set's", format="png", interactive=False,
                                 elem_id="histogram")  # fmt: skip
        reading = gr.Markdown(elem_id="reading")
        read_message = gr.Markdown(elem_id="read-message")

    def do_read(value, y):
        image, note = explorer.prepare(value)
        result = explorer.read(image, y)
        text = f"**{result.bits_per_dim:.3f} bits/dim** ({note}): {result.verdict}"
        picture = explorer.histogram(result.bits_per_dim) if explorer.test_scores is not None else None
        return image.numpy().tolist(), show(image.unsqueeze(0)), show(result.reconstruction.unsqueeze(0)), \
            picture, text  # fmt: skip

    def do_upload(path, y):  # the file is read, then removed; the box is emptied, ready for the next one
        try:
            return (*do_read(path, y), None, "")
        except DemoError as error:
            return (*[gr.update() for _ in range(5)], None, f"**{error}**")
        finally:
            _discard_upload(path, page.uploads)

    def do_pick(choice, y):
        image = page.pick(choice).permute(1, 2, 0).numpy()
        return do_read(image.squeeze(-1) if explorer.model.config.image_shape[0] == 1 else image, y)

    read_outputs = [page.current, shown, reconstruction, histogram, reading, read_message]
    read_button.click(_guarded(do_read, 5), [pad, page.label], read_outputs)
    upload.upload(do_upload, [upload, page.label], [*read_outputs[:-1], upload, read_message])
    picked.input(_guarded(do_pick, 5), [picked, page.label], read_outputs)


def _interpolate_tab(page: _Page, app) -> None:
    import gradio as gr

    explorer = page.explorer
    with gr.Tab("Interpolate"):
        ends = ["the chosen image", *page.picks]
        with gr.Row():
            end_a = gr.Dropdown(ends, value=ends[1] if len(ends) > 1 else ends[0], label="from", elem_id="from")
            end_b = gr.Dropdown(ends, value=ends[2] if len(ends) > 2 else ends[0], label="to", elem_id="to")
            method = gr.Radio(["linear", "slerp"], value="slerp", label="path", elem_id="method")
        position = gr.Slider(0, 1, value=0.5, step=0.05, label="position on the path", elem_id="position")
        with gr.Row():
            frame = gr.Image(label="at this position", format="png", interactive=False, elem_id="frame")
            strip = gr.Image(label="the path", format="png", interactive=False, elem_id="strip")
        path_message = gr.Markdown(elem_id="path-message")

    def end(choice, state) -> Tensor:
        return page.image_of(state) if choice == "the chosen image" else page.pick(choice)

    def do_path(a, b, how, t, state, y):
        at, path = explorer.interpolate(end(a, state), end(b, state), t, how, y)
        return show(at.unsqueeze(0)), show(path, columns=len(path))

    def do_frame(a, b, how, t, state, y):
        return show(explorer.frame(end(a, state), end(b, state), t, how, y).unsqueeze(0))

    path_inputs = [end_a, end_b, method, position, page.current, page.label]
    for trigger in (end_a.input, end_b.input, method.input, position.release):
        trigger(_guarded(do_path, 2), path_inputs, [frame, strip, path_message])
    position.change(_guarded(do_frame, 1), path_inputs, [frame, path_message], trigger_mode="always_last")
    app.load(_guarded(do_path, 2), path_inputs, [frame, strip, path_message])


def _edit_tab(page: _Page) -> None:
    import gradio as gr

    explorer, classes = page.explorer, page.classes
    with gr.Tab("Edit"):
        gr.Markdown("Move the chosen image (Draw or upload tab) along each direction: the mean latent of "
                    "images with an attribute (for MNIST: a digit) minus that of images without it.")  # fmt: skip
        names = list(explorer.directions)
        with gr.Row():
            with gr.Column(scale=2):
                sliders = [
                    gr.Slider(
                        -3,
                        3,
                        value=0,
                        step=0.1,
                        label=names[i] if i < len(names) else f"direction {i}",
                        visible=i < len(names),
                        elem_id=f"direction-{i}",
                    )  # fmt: skip
                    for i in range(MAX_SLIDERS)
                ]
            with gr.Column(scale=1):
                edited = gr.Image(label="edited", format="png", interactive=False, elem_id="edited")
                relabel_button = gr.Button("Same handwriting, another digit", visible=bool(classes),
                                           elem_id="relabel")  # fmt: skip
                relabelled = gr.Image(label="decoded under each class", format="png", interactive=False,
                                      visible=bool(classes), elem_id="relabelled")  # fmt: skip
        directions_file = gr.File(label="another directions file (glowtorch directions)", height=120,
                                  elem_id="directions-file")  # fmt: skip
        edit_message = gr.Markdown(elem_id="edit-message")

    def do_edit(state, y, *amounts):
        names = list(explorer.directions)
        if not names:
            raise DemoError("no directions: upload a directions file made for this model")
        return show(explorer.edit(page.image_of(state), dict(zip(names, amounts, strict=False)), y).unsqueeze(0))

    def do_directions(file):
        if file is None:
            raise DemoError("no file")
        try:
            names = explorer.load_directions(file if isinstance(file, str) else file.name)
        finally:
            _discard_upload(file, page.uploads)
        return tuple(gr.update(label=names[i] if i < len(names) else f"direction {i}", value=0,
                               visible=i < len(names)) for i in range(MAX_SLIDERS))  # fmt: skip

    def do_relabel(state, y):
        return show(explorer.relabel(page.image_of(state), y), columns=len(classes))

    edit_inputs = [page.current, page.label, *sliders]
    for slider in sliders:
        slider.change(_guarded(do_edit, 1), edit_inputs, [edited, edit_message], trigger_mode="always_last")
    directions_file.upload(_guarded(do_directions, MAX_SLIDERS), directions_file, [*sliders, edit_message])
    relabel_button.click(_guarded(do_relabel, 1), [page.current, page.label], [relabelled, edit_message])


def _superres_tab(page: _Page) -> None:
    import gradio as gr

    explorer = page.explorer
    config = explorer.superres.config
    c, h, w = config.context_shape
    with gr.Tab("Super-resolve"):
        gr.Markdown(f"Draw, upload or pick a digit: the page shows its {w}x{h} version and "
                    f"{config.image_shape[2]}x{config.image_shape[1]} digits sampled given only that "
                    f"({config.condition}), each with its bits/dim given the {w}x{h} image.")  # fmt: skip
        with gr.Row():
            pad = gr.Sketchpad(label="draw a digit", type="numpy", image_mode="RGBA", canvas_size=(280, 280),
                               elem_id="sr-pad")  # fmt: skip
            upload = gr.File(label="or upload an image (PNG, JPEG, ...)", type="filepath", elem_id="sr-upload")
        with gr.Row():
            picked = gr.Dropdown(page.picks, label="or pick a test image", elem_id="sr-pick")
            temperature = gr.Slider(0, 1, value=0.6, step=0.05, label="temperature", elem_id="sr-temperature")
            seed = gr.Number(0, precision=0, label="seed", elem_id="sr-seed")
        button = gr.Button("Super-resolve the drawing", variant="primary", elem_id="superres")
        with gr.Row():
            shown = gr.Image(label="the image", format="png", interactive=False, elem_id="sr-input", scale=1)
            small = gr.Image(label=f"its {w}x{h} version (the context)", format="png", interactive=False,
                             elem_id="sr-lowres", scale=1)  # fmt: skip
            samples = gr.Image(label="samples given the context", format="png", interactive=False,
                               elem_id="sr-samples", scale=3)  # fmt: skip
        reading = gr.Markdown(elem_id="sr-reading")
        message = gr.Markdown(elem_id="sr-message")
        source = gr.State(None)  # the image being super-resolved, (C, H, W) uint8 as a nested list

    def run(image, t, s):
        result = explorer.superresolve(image, t, s)
        scores = result.bits_per_dim.tolist()
        per_row = 8
        rows = [", ".join(f"{v:.3f}" for v in scores[i : i + per_row]) for i in range(0, len(scores), per_row)]
        text = (f"**{len(scores)} samples at temperature {float(t):g}**, bits/dim given the {w}x{h} image (mean "
                f"{sum(scores) / len(scores):.3f}), row by row: " + "; ".join(rows)
                + f". The image itself: {result.image_bits_per_dim:.3f} bits/dim given it.")  # fmt: skip
        enlarged = enlarge(result.lowres.unsqueeze(0), config.image_shape[1:])
        return (image.numpy().tolist(), show(image.unsqueeze(0)), show(enlarged),
                show(result.samples, columns=per_row), text)  # fmt: skip

    def do_drawing(value, t, s):
        return run(explorer.prepare(value)[0], t, s)

    def do_upload(path, t, s):  # the file is read, then removed; the box is emptied, ready for the next one
        try:
            return (*do_drawing(path, t, s), None, "")
        except DemoError as error:
            return (*[gr.update() for _ in range(5)], None, f"**{error}**")
        finally:
            _discard_upload(path, page.uploads)

    def do_pick(choice, t, s):
        return run(page.pick(choice), t, s)

    def do_again(state, t, s):  # a new temperature or seed: the same image again
        if state is None:
            raise DemoError("draw, upload or pick a digit first")
        return run(page.image_of(state), t, s)

    outputs = [source, shown, small, samples, reading, message]
    button.click(_guarded(do_drawing, 5), [pad, temperature, seed], outputs)
    upload.upload(do_upload, [upload, temperature, seed], [*outputs[:-1], upload, message])
    picked.input(_guarded(do_pick, 5), [picked, temperature, seed], outputs)
    temperature.release(_guarded(do_again, 5), [source, temperature, seed], outputs)
    seed.submit(_guarded(do_again, 5), [source, temperature, seed], outputs)


def build_app(explorer: Explorer, uploads: Path | None = None):
    """The page: Sample, Draw or upload, Interpolate, Edit and (with a super-resolution model) Super-resolve
    tabs around one ``Explorer``. Uploaded files inside ``uploads`` (the server's private folder, see
    ``launch``) are removed as soon as they are read."""
    import gradio as gr

    classes = list(range(explorer.model.config.num_classes))
    with gr.Blocks(title=f"glowtorch: {explorer.name}", analytics_enabled=False,
                   delete_cache=(CACHE_SECONDS, CACHE_SECONDS)) as app:  # fmt: skip
        gr.Markdown(f"## glowtorch · `{explorer.name}`\nGlow's latent space: every image below is computed exactly "
                    f"(encode, then decode, gives the same pixels back).")  # fmt: skip
        current = gr.State(None)  # the chosen image, (C, H, W) uint8 as a nested list
        label = gr.Dropdown(classes, value=0 if classes else None, label="class", visible=bool(classes),
                            elem_id="label")  # fmt: skip
        page = _Page(explorer, label, current, uploads)
        _sample_tab(page, app)
        _read_tab(page)
        _interpolate_tab(page, app)
        _edit_tab(page)
        if explorer.superres is not None:
            _superres_tab(page)
    return app


def launch(
    explorer: Explorer, host: str = "127.0.0.1", port: int = 7860, quiet: bool = False,
    auth: Sequence[str] | None = None,
) -> None:  # fmt: skip
    """Serves the page until Ctrl-C, on ``host`` only (127.0.0.1: this machine), with nothing fetched from
    outside: no analytics, fonts from the system, uploads capped at 10 MB. ``auth`` ``(user, password)``
    makes the page ask for them.

    Uploads and the pictures the page makes are kept in a private folder (mode 0700) made for this server:
    each upload is removed once read, pictures after an hour, and the folder with everything in it when the
    server stops. SIGINT and SIGTERM stop it cleanly, even where the process started with SIGINT ignored (a
    shell's background job does that to its commands, and Python then never raises KeyboardInterrupt)."""
    import signal

    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    previous = os.environ.get("GRADIO_TEMP_DIR")
    with tempfile.TemporaryDirectory(prefix="glowtorch-demo-") as folder:
        os.environ["GRADIO_TEMP_DIR"] = folder  # read by Gradio on import, and when the app is built and launched
        try:
            import gradio as gr

            theme = gr.themes.Default(font=OFFLINE_THEME_FONTS[0], font_mono=OFFLINE_THEME_FONTS[1])
            app = build_app(explorer, Path(folder))
            app.queue(default_concurrency_limit=1)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.default_int_handler)  # kill, timeout, service managers
            app.launch(server_name=host, server_port=port, theme=theme, quiet=quiet, share=False,
                       max_file_size="10mb", footer_links=[], show_error=False,
                       auth=None if auth is None else tuple(auth))  # fmt: skip
        finally:
            if previous is None:
                os.environ.pop("GRADIO_TEMP_DIR", None)
            else:
                os.environ["GRADIO_TEMP_DIR"] = previous
