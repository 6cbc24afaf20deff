"""Commands about training: ``train``, ``fit-class-prior``, ``plot`` and ``presets``."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from ..checkpoint import load_model, require_new_model_dir, require_new_run
from ..data import DATASETS, load_dataset, load_dataset_for
from ..files import ensure_writable_dir, first_line
from ..model import GlowConfig
from ..presets import load_preset, preset_names, preset_settings
from ..train import TrainConfig
from .common import MODEL_FLAGS, Shared, UsageError, add_config_flags, int_up_to, output_path

__all__ = ["add_fit_class_prior", "add_plot", "add_presets", "add_train"]


def add_train(sub: argparse._SubParsersAction, shared: Shared) -> None:
    t = sub.add_parser("train", help="train a model", parents=[shared.device, shared.progress],
                       description="Train Glow; flags override the preset's values.")  # fmt: skip
    t.add_argument("--preset", help=f"one of: {', '.join(preset_names())}")
    t.add_argument("--dataset", choices=sorted(DATASETS), help="default: the preset's, else digits")
    t.add_argument("--data-dir", help="folder holding the dataset's files")
    t.add_argument("--image-size", type=int_up_to(4096), help="center-crop and resize to this square size")
    t.add_argument("--channels", type=int, choices=[1, 3], help="channels for image folders (default 3)")
    t.add_argument("--out", "-o", help="run directory (default runs/PRESET)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    t.add_argument("--conditional", action="store_true", help="class-conditional model from the dataset's labels")
    architecture = t.add_argument_group("model (GlowConfig)")
    training = t.add_argument_group("training (TrainConfig)")
    t.set_defaults(
        func=cmd_train,
        model_flags=add_config_flags(architecture, GlowConfig, skip=MODEL_FLAGS),
        train_flags=add_config_flags(training, TrainConfig),
    )


def cmd_train(args) -> int:
    """Joins torchrun's process group when there is one (one process otherwise) and trains."""
    import torch.distributed

    from ..distributed import init_distributed, peer_failed, shutdown

    dist = init_distributed(args.device)
    out = Path(args.out or f"runs/{args.preset or args.dataset or 'digits'}")
    created = [p for p in (out, *out.parents) if not p.exists()]
    try:
        return _train(args, dist, out)
    except (torch.distributed.DistError, RuntimeError) as error:
        if isinstance(error, torch.distributed.DistError) or (dist.enabled and peer_failed(error)):
            # a peer died or the network failed: its own output says why
            raise UsageError(f"another process of the job failed ({first_line(error)}); see its output") from None
        _remove_empty(created)
        raise
    except BaseException:
        _remove_empty(created)
        raise
    finally:
        shutdown()


def _remove_empty(folders: list[Path]) -> None:
    """Removes the folders this command made and left empty."""
    for folder in folders:
        with contextlib.suppress(OSError):  # another process may have written there meanwhile
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def _given(args, names: list[str]) -> dict:
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def _train(args, dist, out: Path) -> int:
    from tqdm import tqdm

    from ..train import train

    settings = preset_settings(args.preset, args.dataset, args.image_size, _given(args, args.model_flags),
                               _given(args, args.train_flags))  # fmt: skip
    dataset = settings.dataset
    say = tqdm.write if dist.is_main else (lambda *a, **k: None)
    config = _config(TrainConfig, settings.train)
    if not args.resume:
        require_new_run(out)  # before loading data; the trainer checks again before writing
    image_size = settings.image_size
    channels = args.channels or 3
    train_data = load_dataset(dataset, args.data_dir, train=True, image_size=image_size, channels=channels)
    test_data = load_dataset(
        dataset, args.data_dir, train=False, image_size=image_size or train_data.images.shape[2], channels=channels
    )
    model_values = dict(settings.model)
    if args.conditional:
        if train_data.labels is None:
            raise UsageError(f"--conditional needs labels, and the {dataset} dataset has none")
        model_values["num_classes"] = train_data.num_classes
    model_config = _config(GlowConfig, {"image_shape": train_data.image_shape, **model_values})
    ensure_writable_dir(out)
    say(
        f"training on {dataset}: {len(train_data)} train / {len(test_data)} test images of shape "
        f"{train_data.image_shape}; L={model_config.levels} K={model_config.depth} "
        f"width={model_config.hidden_channels} -> {out}"
    )
    if dist.enabled:
        say(f"{dist.world_size} processes, {config.batch_size // dist.world_size} images each per step")
    metrics = train(model_config, config, train_data, test_data, out, resume=args.resume,
                    progress=not args.no_progress, dist=dist, log=say)  # fmt: skip
    if "test_bpd" in metrics:
        say(f"test bits/dim {metrics['test_bpd']:.4f} after {metrics['step']} steps; samples in {out / 'samples'}")
    return 0


def _config(cls: type, values: dict):
    """``cls(**values)``; a value the dataclass refuses becomes a usage error naming it."""
    try:
        return cls(**values)
    except ValueError as error:
        raise UsageError(f"invalid option: {error} (see 'glowtorch train --help')") from None


def add_fit_class_prior(sub: argparse._SubParsersAction, shared: Shared) -> None:
    fc = sub.add_parser("fit-class-prior",
                        help="give a class-conditional model a per-class, per-position top prior fitted to data",
                        parents=[shared.model, shared.dataset, shared.device, shared.progress])  # fmt: skip
    fc.add_argument("--out", "-o", required=True, help="folder for the new model (config.json + model.safetensors)")
    fc.add_argument("--seed", type=int, default=0, help="seed of the dequantization noise")
    fc.set_defaults(func=cmd_fit_class_prior)


def cmd_fit_class_prior(args) -> int:
    from ..checkpoint import save_model
    from ..class_prior import fit_class_prior

    model = load_model(args.checkpoint, device=args.device)
    if not model.config.num_classes:
        raise UsageError("fit-class-prior needs a class-conditional model (trained with --conditional)")
    data = load_dataset_for(model.config.image_shape, args.dataset, args.data_dir, train=True)
    if data.labels is None:
        raise UsageError(f"the {args.dataset} dataset has no labels to fit a class prior to")
    out = ensure_writable_dir(require_new_model_dir(args.out))
    fitted = fit_class_prior(model, data.images, data.labels, seed=args.seed, progress=not args.no_progress)
    save_model(fitted, out)
    print(f"fitted a spatial class prior to {len(data)} training images; model in {out} "
          f"(glowtorch evaluate {out} --dataset {args.dataset} ... gives both classifiers' accuracy)")  # fmt: skip
    return 0


def add_plot(sub: argparse._SubParsersAction, shared: Shared) -> None:
    pl = sub.add_parser("plot", help="plot a run's train and test bits/dim")
    pl.add_argument("run_dir")
    pl.add_argument("--output", "-o", help="default: RUN_DIR/bpd.png")
    pl.set_defaults(func=cmd_plot)


def cmd_plot(args) -> int:
    from ..plots import plot_metrics

    metrics = Path(args.run_dir) / "metrics.jsonl"
    if not metrics.is_file():
        raise UsageError(f"{metrics} not found: pass a run directory written by glowtorch train")
    output = output_path(args.output or str(Path(args.run_dir) / "bpd.png"))
    plot_metrics(metrics, output)
    print(f"wrote {output}")
    return 0


def add_presets(sub: argparse._SubParsersAction, shared: Shared) -> None:
    sub.add_parser("presets", help="list the shipped presets").set_defaults(func=cmd_presets)


def cmd_presets(args) -> int:
    for name in preset_names():
        preset = load_preset(name)
        print(f"{name:12s} {preset['description']}")
    return 0


# --------------------------------------------------------------------------- parser
