"""Commands that score images: ``evaluate`` (a dataset's bits/dim) and ``score`` (per-image, for OOD)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..checkpoint import load_baseline, load_model
from ..data import DATASETS, load_dataset_for
from .common import SEED, Shared, UsageError, float_list, int_up_to, output_path, positive_int

__all__ = ["add_evaluate", "add_ood", "add_score", "add_superres"]


def add_evaluate(sub: argparse._SubParsersAction, shared: Shared) -> None:
    e = sub.add_parser("evaluate", help="test bits/dim of a checkpoint",
                       parents=[shared.model, shared.dataset, shared.device, shared.progress])  # fmt: skip
    e.add_argument("--split", choices=["test", "train"], default="test")
    draws = e.add_mutually_exclusive_group()
    draws.add_argument("--draws", type=int_up_to(1000), default=1, help="dequantization draws to average")
    draws.add_argument("--importance-samples", type=int_up_to(1000), metavar="K", dest="importance_samples",
                       help="K draws: mean one-sample bound and importance-weighted bound over them")  # fmt: skip
    e.add_argument("--batch-size", type=int_up_to(100_000), default=500)
    e.add_argument("--seed", type=SEED, default=1234, help="seed of the dequantization noise")
    e.add_argument("--round-trip", action="store_true",
                   help="also report how exactly the model inverts these images (encode, then decode)")  # fmt: skip
    e.add_argument(
        "--baseline",
        metavar="MODEL",
        help="conditional models: an unconditional model of the same images, scored beside (same noise)",
    )
    e.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    from ..evaluate import evaluate_bits_per_dim

    model = load_model(args.checkpoint, device=args.device)
    baseline = load_baseline(model.config, args.baseline, args.device) if args.baseline else None
    data = load_dataset_for(model.config.image_shape, args.dataset, args.data_dir, train=args.split == "train")
    args.draws = args.importance_samples or args.draws
    result = evaluate_bits_per_dim(
        model, data, args.batch_size, args.draws, seed=args.seed, progress=not args.no_progress
    )
    given = f" given the {model.config.condition} context" if model.config.condition else ""
    line = (
        f"{args.dataset} {args.split}: {result['test_bpd']:.4f} bits/dim{given} over {len(data)} images, "
        f"{args.draws} draw(s)"
    )
    if "test_accuracy" in result:
        line += (f"; latent classifier accuracy {result['test_accuracy']:.4f}, "
                 f"highest p(x | y) {result['test_accuracy_likelihood']:.4f}")  # fmt: skip
    print(line)
    if args.draws > 1:
        print(f"importance-weighted over the {args.draws} draws: {result['test_bpd_importance_weighted']:.4f} "
              "bits/dim (the line above is the mean of one-draw bounds)")  # fmt: skip
    print(
        f"per image: median {result['test_bpd_median']:.4f}, "
        f"worst {result['test_bpd_max']:.4f} (image {result['test_worst_image']})"
    )
    if baseline is not None:
        other = evaluate_bits_per_dim(
            baseline, data, args.batch_size, args.draws, seed=args.seed, progress=not args.no_progress
        )
        print(
            f"baseline {args.baseline}: {other['test_bpd']:.4f} bits/dim without a context (same images and noise); "
            f"the context saves {other['test_bpd'] - result['test_bpd']:.4f} bits/dim"
        )
    if args.round_trip:
        from ..latent import round_trip_report

        labels = data.labels if model.config.num_classes else None
        report = round_trip_report(model, data.images, labels)
        dtype = str(model.top_prior.dtype).removeprefix("torch.")
        print(
            f"round trip in {dtype}: {report['float64_images']} of {report['images']} images need float64 "
            f"({report['wrong_pixels']} wrong pixels without it); worst error {report['worst_error']:.3g} "
            f"(image {report['worst_image']}), {report['amplification']:.3g}x the {dtype} rounding; "
            f"exact paths: {report['exact_wrong_pixels']} wrong pixels"
        )
    return 0


def add_score(sub: argparse._SubParsersAction, shared: Shared) -> None:
    sc = sub.add_parser("score", help="per-image bits/dim of test sets (CSV + histogram), e.g. for OOD",
                        parents=[shared.model, shared.device])  # fmt: skip
    sc.add_argument("--dataset", action="append", required=True, metavar="NAME[=DIR]",
                    help="a dataset's test split, optionally with its folder; repeat to compare")  # fmt: skip
    sc.add_argument("--limit", type=positive_int, help="score only the first N images of each")
    sc.add_argument("--draws", type=int_up_to(1000), default=1, help="dequantization draws to average")
    sc.add_argument("--batch-size", type=int_up_to(100_000), default=500)
    sc.add_argument("--seed", type=SEED, default=1234, help="seed of the dequantization noise")
    sc.add_argument("--output", "-o", default="scores.csv")
    sc.add_argument("--histogram", help="default: the CSV path with .png")
    sc.set_defaults(func=cmd_score)


def cmd_score(args) -> int:
    from ..evaluate import score_images, write_scores
    from ..plots import plot_score_histogram

    model = load_model(args.checkpoint, device=args.device)
    scores = {}
    names = [spec.partition("=")[0] for spec in args.dataset]
    for spec in args.dataset:
        name, _, data_dir = spec.partition("=")
        label = name if names.count(name) == 1 else f"{name}:{Path(data_dir).name or data_dir}"
        if name not in DATASETS:
            raise UsageError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
        data = load_dataset_for(model.config.image_shape, name, data_dir or None, train=False)
        images, labels = data.images[: args.limit], data.labels
        if model.config.num_classes and labels is None:
            raise UsageError(f"the model is class-conditional and {name} has no labels")
        labels = labels[: len(images)] if model.config.num_classes else None
        scores[label] = score_images(model, images, labels, args.batch_size, args.draws, args.seed).bits_per_dim
    csv_path = write_scores(output_path(args.output), scores)
    histogram = Path(args.histogram) if args.histogram else csv_path.with_suffix(".png")
    plot_score_histogram(scores, output_path(str(histogram)))
    for spec, values in scores.items():
        print(f"{spec}: {len(values)} images, mean {values.mean():.4f} bits/dim, median {values.median():.4f}")
    print(f"wrote {csv_path} and {histogram}")
    return 0


def add_ood(sub: argparse._SubParsersAction, shared: Shared) -> None:
    o = sub.add_parser("ood", help="out-of-distribution detection: four likelihood scores, AUROC/AUPR/FPR95",
                       parents=[shared.model, shared.device, shared.progress],
                       description="Scores the in-distribution test split and each other set with bits/dim, "
                       "typicality (per image and per batch), input complexity and, with --background, the "
                       "likelihood ratio; writes scores.csv, metrics.json/.md and a histogram per score.")  # fmt: skip
    o.add_argument("--in", dest="in_set", required=True, metavar="NAME=DIR",
                   help="the in-distribution dataset (its test split is scored, its training split gives the "
                   "typical bits/dim)")  # fmt: skip
    o.add_argument("--out", dest="out_sets", action="append", required=True, metavar="NAME[:TRANSFORM][=DIR]",
                   help="a set to detect: a dataset's test split, transformed (:invert, :rot90, :hflip), or "
                   "noise, constant, samples (the model's own at T=1); repeat for more")  # fmt: skip
    o.add_argument("--report", "-o", required=True, help="folder for the report")
    o.add_argument("--background", help="a model trained on perturbed inputs (glowtorch train --perturb 0.2): "
                   "adds the likelihood-ratio score")  # fmt: skip
    o.add_argument("--limit", type=positive_int, default=10000, help="images per set (default 10000)")
    o.add_argument("--train-images", type=positive_int, default=2000,
                   help="training images that estimate the typical bits/dim")  # fmt: skip
    o.add_argument(
        "--batch-size", type=int_up_to(100_000), default=8, help="images per batch of the batch typicality test"
    )
    o.add_argument("--draws", type=int_up_to(1000), default=1, help="dequantization draws to average")
    o.set_defaults(func=cmd_ood)


def cmd_ood(args) -> int:
    from ..files import ensure_writable_dir
    from ..ood import load_ood_set, ood_report, typical_images

    model = load_model(args.checkpoint, device=args.device)
    background = load_model(args.background, device=args.device) if args.background else None
    if background is not None and background.config.image_shape != model.config.image_shape:
        raise UsageError(f"the background model takes {background.config.image_shape} images, the model "
                         f"{model.config.image_shape}: train it on the same data")  # fmt: skip
    name = args.in_set.partition("=")[0]
    if name not in DATASETS:
        raise UsageError(f"unknown dataset {name!r} in --in; choose one of {', '.join(DATASETS)}")
    in_set = load_ood_set(args.in_set, model, args.limit)
    train = typical_images(args.in_set, model, args.train_images)
    out_sets = [load_ood_set(spec, model, args.limit, seed=i) for i, spec in enumerate(args.out_sets, 1)]
    folder = ensure_writable_dir(Path(args.report))
    report = ood_report(model, in_set, out_sets, train, background, args.batch_size, args.draws,
                        progress=not args.no_progress)  # fmt: skip
    report.write(folder)
    print(f"in: {in_set[0]}, {len(in_set[1])} test images; typical bits/dim {report.typical_bpd:.4f} "
          f"({len(train)} training images)")  # fmt: skip
    print(report.table())
    print(f"wrote {folder / 'scores.csv'}, metrics.json, metrics.md and a histogram per score")
    return 0


def add_superres(sub: argparse._SubParsersAction, shared: Shared) -> None:
    sr = sub.add_parser("superres", help="measure a super-resolution model (--condition lowres:F) on a test set",
                        description="Conditional bits/dim (beside --baseline), how faithful samples are to their "
                        "context, PSNR of the mode and of bicubic upsampling, diversity; optionally a figure.",
                        parents=[shared.model, shared.dataset, shared.device, shared.progress])  # fmt: skip
    sr.add_argument("--baseline", metavar="MODEL", help="an unconditional model of the same images, scored beside")
    sr.add_argument("--limit", type=positive_int, help="measure only the first N test images")
    sr.add_argument("--draws", type=int_up_to(1000), default=1, help="dequantization draws for bits/dim")
    sr.add_argument("--temperatures", type=float_list, default=[0.0, 0.6, 1.0], help="fidelity's temperatures")
    sr.add_argument("--samples", type=int_up_to(1024), default=8, help="samples per context for the diversity")
    sr.add_argument("--seed", type=SEED, default=0)
    sr.add_argument("--figure", help="also write a PNG: per image its context, bicubic, samples at 0.6 and 1.0, truth")
    sr.add_argument("--rows", type=int_up_to(1024), default=8, help="images in the figure")
    sr.add_argument("--json", help="also write the figures to this JSON file")
    sr.set_defaults(func=cmd_superres)


def cmd_superres(args) -> int:
    import json

    from ..context import lowres_factor
    from ..evaluate import evaluate_bits_per_dim
    from ..images import save_grid
    from ..superres import superres_figure, superres_report

    model = load_model(args.checkpoint, device=args.device)
    lowres_factor(model.config.condition, "superres")  # before any data is read
    baseline = load_baseline(model.config, args.baseline, args.device) if args.baseline else None
    if args.samples < 2:
        raise UsageError("--samples must be at least 2 (a standard deviation across samples)")
    figure = output_path(args.figure) if args.figure else None
    data = load_dataset_for(model.config.image_shape, args.dataset, args.data_dir, train=False)
    if args.limit:
        data.images = data.images[: args.limit]
        data.labels = None if data.labels is None else data.labels[: args.limit]
    progress = not args.no_progress
    result = {"model": args.checkpoint, "dataset": args.dataset, "samples": args.samples, "draws": args.draws}
    result["test_bpd"] = evaluate_bits_per_dim(model, data, draws=args.draws, progress=progress)["test_bpd"]
    print(f"{args.dataset} test, {len(data)} images: {result['test_bpd']:.4f} bits/dim given the "
          f"{model.config.condition} context ({args.draws} draw(s))")  # fmt: skip
    if baseline is not None:
        result["baseline"] = args.baseline
        result["baseline_bpd"] = evaluate_bits_per_dim(baseline, data, draws=args.draws, progress=progress)["test_bpd"]
        print(f"baseline {args.baseline}: {result['baseline_bpd']:.4f} bits/dim without a context")
    report = superres_report(model, data.images, args.temperatures, args.samples, args.seed, progress=progress)
    result.update(report)
    fidelity = ", ".join(f"T={t}: {v:.3f}" for t, v in report["fidelity_mae"].items())
    print(f"fidelity (grey levels between a sample's {report['factor']}x average-pooled version and its context): "
          f"{fidelity}; bicubic upsampling {report['bicubic_fidelity_mae']:.3f}")  # fmt: skip
    print(f"PSNR against the true image: mode (T=0) {report['psnr_mode']:.2f} dB, "
          f"bicubic {report['psnr_bicubic']:.2f} dB")  # fmt: skip
    diversity = ", ".join(f"T={t}: {v:.2f}" for t, v in report["diversity"].items())
    print(f"diversity (per-pixel std across {args.samples} samples of a context, grey levels): {diversity}")
    if figure:
        cells, columns = superres_figure(model, data.images[: args.rows], seed=args.seed)
        save_grid(cells, figure, columns=columns, scale=2)
        print(f"wrote {figure}")
    if args.json:
        path = output_path(args.json)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")
    return 0
