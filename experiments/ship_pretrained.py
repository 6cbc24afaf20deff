"""Makes a trained run a shipped model: copies its EMA weights into ``src/glowtorch/pretrained/NAME/``,
measures it on the full test set, and writes its ``card.json``, the demo's test scores and class
directions beside it, its model card ``docs/model-NAME.md`` and the card's figures (training curve,
samples per temperature, one row per class)::

    python experiments/ship_pretrained.py RUN_DIR NAME --data-dir ../shared/data/mnist \
        --cpu-seconds 7200 --command "glowtorch train --preset mnist-cpu ..."

``--cpu-seconds`` is the training process's CPU time (user + system), measured outside: the run folder
records wall time only. ``--fit-class-prior`` (class-conditional runs) gives the shipped model a
``class_prior="spatial"`` top prior fitted to the training set (``glowtorch.train.fit_class_prior``):
the flow is the run's, unchanged.

Super-resolution runs (``--condition lowres:F``) are measured by the command the card gives,
``glowtorch superres pretrained:NAME --baseline pretrained:mnist ...`` (run here through
``glowtorch.cli.main``, so the card holds what that command prints), and ``--twin RUN`` (an unconditional
run of the same recipe and budget) is evaluated beside; they ship without the demo's reference files.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from glowtorch.checkpoint import load_model, resolve_checkpoint, save_model
from glowtorch.cli import main as glowtorch
from glowtorch.data import load_dataset
from glowtorch.evaluate import score_images, summarize_scores
from glowtorch.images import save_grid
from glowtorch.latent import round_trip_report, temperature_grid
from glowtorch.model import Glow
from glowtorch.plots import plot_metrics, read_metrics
from glowtorch.pretrained import pretrained_card
from glowtorch.reference import build_reference
from glowtorch.train import fit_class_prior

ROOT = Path(__file__).resolve().parents[1]
TEMPERATURES = (0.0, 0.5, 0.7, 0.8, 1.0)


def measure(model, data, draws: int) -> tuple[dict, torch.Tensor]:
    """Test bits/dim (mean over images of the mean over ``draws``), median and worst image; accuracy;
    and the per-image scores."""
    labels = data.labels if model.config.num_classes else None
    scores = score_images(model, data.images, labels, draws=draws, progress=True)
    summary = summarize_scores(scores, labels)
    result = {
        "test_bpd": summary["test_bpd"],
        "test_bpd_median": summary["test_bpd_median"],
        "test_bpd_worst": summary["test_bpd_max"],
        "test_worst_image": summary["test_worst_image"],
        "draws": draws,
    }
    if draws > 1:  # the importance-weighted bound over the same draws (q = 1 for uniform dequantization)
        result["test_bpd_importance_weighted"] = scores.importance_weighted.sum().item() / len(scores.bits_per_dim)
    for key in ("test_accuracy", "test_accuracy_likelihood"):
        if key in summary:
            result[key] = summary[key]
    return result, scores.bits_per_dim


def with_fitted_class_prior(model: Glow, data_dir: str) -> Glow:
    """The model with a spatial class prior fitted to the 60,000 training images; the flow is unchanged."""
    train = load_dataset("mnist", data_dir, train=True)
    return fit_class_prior(model, train.images, train.labels, progress=True).eval()


def figures(model, run: Path, name: str, out: Path, data_dir: str) -> dict[str, str]:
    """The card's pictures under ``out``; returns ``{kind: file name}``."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"curve": f"model-{name}-curve.png", "samples": f"model-{name}-samples.png"}
    plot_metrics(run / "metrics.jsonl", out / files["curve"])
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(10) % model.config.num_classes if model.config.num_classes else None
    context = None
    if model.config.condition:  # column k: the context of test image k
        context = model.config.context_of(load_dataset("mnist", data_dir, train=False).images[:10])
    grid = temperature_grid(model, TEMPERATURES, 10, generator, labels, context=context)
    save_grid(grid, out / files["samples"], columns=10, scale=2)
    if model.config.num_classes:
        files["classes"] = f"model-{name}-classes.png"
        y = torch.arange(model.config.num_classes).repeat_interleave(10)
        samples = temperature_grid(model, [0.7], len(y), torch.Generator().manual_seed(1), y)
        save_grid(samples, out / files["classes"], columns=10, scale=2)
    return files


def run_superres(name: str, data_dir: str, baseline: str, draws: int) -> dict:
    """What ``glowtorch superres pretrained:NAME --baseline BASELINE`` prints as JSON on the MNIST test set
    (its figure into docs/figures), with the command under ``"command"`` (the data folder as DIR)."""
    import tempfile

    figure = ROOT / "docs" / "figures" / f"model-{name}-superres.png"
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "superres.json"
        argv = ["superres", f"pretrained:{name}", "--dataset", "mnist", "--data-dir", data_dir,
                "--baseline", baseline, "--draws", str(draws), "--figure", str(figure),
                "--json", str(report)]  # fmt: skip
        assert glowtorch(argv) == 0
        result = json.loads(report.read_text())
    result["command"] = "glowtorch " + " ".join(argv[:-4]).replace(data_dir, "DIR") + " --figure superres.png"
    return result


def superres_measurements(args, card: dict) -> dict:
    """``glowtorch superres`` on the shipped model against ``pretrained:mnist``, and the twin's bits/dim."""
    result = run_superres(args.name, args.data_dir, "pretrained:mnist", args.draws)
    assert abs(result["test_bpd"] - card["test_bpd"]) < 1e-12, (result["test_bpd"], card["test_bpd"])
    if args.twin:
        twin = load_model(resolve_checkpoint(args.twin)).eval()
        twin_scores, _ = measure(twin, load_dataset("mnist", args.data_dir, train=False), args.draws)
        twin_metrics = read_metrics(args.twin / "metrics.jsonl")
        result["twin"] = {
            "test_bpd": twin_scores["test_bpd"],
            "steps": twin_metrics[-1]["step"],
            "parameters": sum(p.numel() for p in twin.parameters()),
            "cpu_hours": args.twin_cpu_seconds / 3600,
            "command": args.twin_command,
        }
    return result


def dequantization_words(arch: dict) -> str:
    """How the card's bits/dim was computed, in words."""
    if arch.get("dequantization", "uniform") == "variational":
        return (
            "variational dequantization (each figure an upper bound on the discrete image's -log2 P(x) / D: "
            "E_q[-log p(x + u) + log q(u | x)] for the one-draw mean, tighter importance-weighted over the draws)"
        )
    return "uniform dequantization"


def card_text(card: dict, files: dict[str, str]) -> str:
    """The model card in Markdown."""
    arch = card["architecture"]
    weighted = "test_bpd_importance_weighted" in card
    lines = [
        f"# Model card: `pretrained:{card['name']}`",
        "",
        f'{card["summary"]} Load it with `glowtorch.load_pretrained("{card["name"]}")`, or pass '
        f"`pretrained:{card['name']}` to any command that takes a model.",
        "",
        "## Architecture",
        "",
        f"Glow with L={arch['levels']} levels of K={arch['depth']} steps, coupling networks {arch['hidden_channels']} "
        f"channels wide, {arch['coupling']} coupling, {arch['permutation']} 1x1 convolutions, learned top prior, "
        f"{arch['n_bits']}-bit {card['dataset']} images of shape {tuple(arch['image_shape'])}"
        + (f", conditioned on {arch['num_classes']} classes" if arch["num_classes"] else "")
        + (
            f", conditioned on `{arch['condition']}` (a context encoder {arch['context_features']} channels wide)"
            if arch.get("condition")
            else ""
        )
        + f": {card['parameters']:,} parameters, {card['weights_mb']:.1f} MB of weights (float32, EMA).",
        "",
        "## Training",
        "",
        "```",
        card["command"],
        "```",
        "",
        *([card["history"], ""] if card.get("history") else []),
        f"{card['steps']:,} steps of batch {card['batch_size']} ({card['epochs']:.1f} epochs of the 60,000 training "
        f"images), {card['train_minutes']:.0f} minutes of wall time and {card['cpu_hours']:.2f} CPU-hours "
        f"({card['threads']} thread{'s' * (card['threads'] != 1)}) on {card['hardware']}.",
        "",
        f"![training curve](figures/{files['curve']})",
        "",
        "Train bits/dim is the mean over the steps since the previous evaluation; test bits/dim is the EMA",
        "model's on the 10,000 test images (one dequantization draw per evaluation).",
        "",
        "## Evaluation",
        "",
        f"On the full 10,000-image test set, {dequantization_words(arch)}, exact mean over images of the mean over "
        f"{card['draws']} draws:",
        "",
        "| test bits/dim | median image | worst image |"
        + (f" importance-weighted ({card['draws']} draws) |" if weighted else "")
        + (" latent classifier accuracy | accuracy of the highest p(x \\| y) |" if "test_accuracy" in card else ""),
        "|---|---|---|" + ("---|" if weighted else "") + ("---|---|" if "test_accuracy" in card else ""),
        f"| **{card['test_bpd']:.4f}** | {card['test_bpd_median']:.4f} | {card['test_bpd_worst']:.3f} "
        f"(test image {card['test_worst_image']}) |"
        + (f" {card['test_bpd_importance_weighted']:.4f} |" if weighted else "")
        + (
            f" {card['test_accuracy']:.4f} | {card['test_accuracy_likelihood']:.4f} |"
            if "test_accuracy" in card
            else ""
        ),
        "",
        *(
            [
                f"The run's own `{card['as_trained']['class_prior']}` class prior, as trained, measured the same way: "
                f"{card['as_trained']['test_bpd']:.4f} bits/dim, latent classifier "
                f"{card['as_trained']['test_accuracy']:.4f}, highest p(x | y) "
                f"{card['as_trained']['test_accuracy_likelihood']:.4f}; the shipped model's prior is the spatial "
                "one fitted to the training images (`glowtorch fit-class-prior`), the flow unchanged.",
                "",
            ]
            if "as_trained" in card
            else []
        ),
        "Exactness on all 10,000 test images (`glowtorch evaluate --round-trip`): the float32 round trip "
        f"changes {card['round_trip']['wrong_pixels']} pixels "
        f"(largest error {card['round_trip']['worst_error']:.1e}"
        + (", a non-finite value" if card["round_trip"]["worst_error"] == float("inf") else "")
        + "); "
        f"{card['round_trip']['float64_images']} image(s) recomputed in float64 by the exact paths, after which "
        f"encode then decode changes {card['round_trip']['exact_wrong_pixels']} pixels.",
        "",
        f"Reproduce: `glowtorch evaluate pretrained:{card['name']} --dataset mnist --data-dir DIR "
        f"--importance-samples {card['draws']}`"
        + (
            " (it prints the table's mean of one-draw bounds, then the importance-weighted figure)."
            if weighted
            else "."
        ),
        "",
        "## Samples",
        "",
        "One row per temperature: "
        + ", ".join(f"{t:g}" for t in TEMPERATURES)
        + " (top to bottom)"
        + ("; column k is drawn given the low-resolution version of test image k." if "superres" in card else "."),
        "",
        f"![samples](figures/{files['samples']})",
        "",
    ]
    if "classes" in files:
        lines += ["One row per class, 0 to 9, at temperature 0.7:", "", f"![classes](figures/{files['classes']})", ""]
    if "superres" in card:
        lines += superres_text(card, files)
    return "\n".join(lines)


def baseline_sentence(card: dict, mnist: dict) -> str:
    """How the super-resolution model stands against ``pretrained:mnist``, from the figures."""
    times = mnist["cpu_hours"] / card["cpu_hours"]
    side = card["architecture"]["image_shape"][1] // card["superres"]["factor"]
    if card["test_bpd"] < mnist["test_bpd"]:
        gap = mnist["test_bpd"] - card["test_bpd"]
        pixels = math.prod(card["architecture"]["image_shape"])  # dimensions: bits/dim x dims = bits per image
        return (f"Given the {side}x{side} image, this model is below `pretrained:mnist` ({card['test_bpd']:.4f} "
                f"against {mnist['test_bpd']:.4f} bits/dim, {gap:.4f} lower: {gap * pixels:.0f} bits per image), "
                f"as a conditional model of the same data should be (log p(x) = log p(c) + log p(x | c)), "
                f"although `pretrained:mnist` trained on {times:.1f} times its CPU time.")  # fmt: skip
    return (
        f"`pretrained:mnist`, trained on {times:.1f} times the CPU time (its recipe: "
        f"{mnist['architecture'].get('coupling', 'affine')} coupling, "
        f"{mnist['architecture'].get('dequantization', 'uniform')} dequantization), is lower "
        f"({mnist['test_bpd']:.4f}) although this model is given the {side}x{side} image: this model is "
        "under-trained (its curve above is still falling at its last step)."
    )


def superres_text(card: dict, files: dict[str, str]) -> list[str]:
    """The card's super-resolution section."""
    sr = card["superres"]
    side = card["architecture"]["image_shape"][1] // sr["factor"]
    mnist = pretrained_card("mnist")
    rows = [
        f"| `pretrained:{card['name']}`, given the {side}x{side} image | **{sr['test_bpd']:.4f}** | "
        f"{card['parameters']:,} | {card['steps']:,} steps, {card['cpu_hours']:.2f} CPU-hours |",
    ]
    if "twin" in sr:
        twin = sr["twin"]
        rows.append(f"| the same flow without a context, same recipe and steps | {twin['test_bpd']:.4f} | "
                    f"{twin['parameters']:,} | {twin['steps']:,} steps, {twin['cpu_hours']:.2f} CPU-hours, "
                    f"trained beside it: `{twin['command']}` |")  # fmt: skip
    rows.append(f"| `pretrained:mnist`, no context | {sr['baseline_bpd']:.4f} | {mnist['parameters']:,} | "
                f"{mnist['steps']:,} steps, {mnist['cpu_hours']:.2f} CPU-hours |")  # fmt: skip
    lines = [
        "## Super-resolution",
        "",
        f"Measured on the {sr['images']:,} test images by",
        "",
        "```",
        sr["command"],
        "```",
        "",
        f"({card['draws']} dequantization draws for bits/dim; one sample per image and temperature; grey levels "
        "of 0..255).",
        "",
        "| model | test bits/dim | parameters | training |",
        "|---|---|---|---|",
        *rows,
        "",
        f"The flow is the same in {'all three' if 'twin' in sr else 'both'} (L={card['architecture']['levels']}, "
        f"K={card['architecture']['depth']}, width {card['architecture']['hidden_channels']}). The context adds "
        f"the encoder and, above all, {card['architecture']['context_features'] + 1} input channels to the first "
        "convolution of every coupling network (and to the priors): most of the extra parameters, and "
        f"{(card['cpu_hours'] / card['steps']) / (mnist['cpu_hours'] / mnist['steps']):.2f} times the CPU time per "
        "step of `pretrained:mnist` (each run's CPU time over its steps, evaluations included).",
        "",
        *(
            [
                f"Between the twin and this model (the same flow, the same steps) the difference, "
                f"{sr['twin']['test_bpd'] - sr['test_bpd']:.4f} bits/dim "
                f"({(sr['twin']['test_bpd'] - sr['test_bpd']) * math.prod(card['architecture']['image_shape']):.0f} "
                f"bits per image), estimates what the {side}x{side} image tells about the digit.",
            ]
            if "twin" in sr
            else []
        ),
        baseline_sentence(card, mnist),
        "",
        f"Fidelity: the mean absolute difference between a sample's {sr['factor']}x average-pooled version and "
        "its context (0 when the sample is an image that context came from).",
        "",
        "| temperature | " + " | ".join(sr["fidelity_mae"]) + " | bicubic upsampling |",
        "|---|" + "---|" * (len(sr["fidelity_mae"]) + 1),
        "| grey levels | "
        + " | ".join(f"{v:.2f}" for v in sr["fidelity_mae"].values())
        + f" | {sr['bicubic_fidelity_mae']:.2f} |",
        "",
        f"PSNR against the true image (mean over images): the mode (temperature 0) **{sr['psnr_mode']:.2f} dB**, "
        f"bicubic upsampling {sr['psnr_bicubic']:.2f} dB.",
        "",
        f"Diversity: the per-pixel standard deviation across {sr.get('samples', 8)} samples of one context, "
        "averaged over pixels and contexts: "
        + ", ".join(f"{v:.1f} grey levels at temperature {t}" for t, v in sr["diversity"].items())
        + ".",
        "",
        "Per test image: its context (enlarged), bicubic upsampling, three samples at temperature 0.6, three at "
        "1.0, the true image:",
        "",
        f"![super-resolution](figures/{files['superres']})",
        "",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("name")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--cpu-seconds", type=float, required=True)
    parser.add_argument("--wall-seconds", type=float,
                        help="the run's wall time; needed when it counted CPU time (--budget-clock cpu)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hardware", default="a 2-core AMD EPYC (no AVX-512), sharing it with a second training run")
    parser.add_argument("--command", required=True)
    parser.add_argument("--summary", required=True, help="the card's first sentence")
    parser.add_argument("--history", default="", help="how the run went, if not one uninterrupted command")
    parser.add_argument("--fit-class-prior", action="store_true", help="ship a spatial class prior, fitted")
    parser.add_argument("--twin", type=Path, help="super-resolution: an unconditional run of the same recipe")
    parser.add_argument("--twin-command", default="", help="the twin's training command")
    parser.add_argument("--twin-cpu-seconds", type=float, default=0.0, help="the twin's CPU time")
    args = parser.parse_args()

    train_config = json.loads((args.run / "train_config.json").read_text())
    if train_config.get("budget_clock") == "cpu" and args.wall_seconds is None:  # checked before any loading
        parser.error("the run's elapsed_s is CPU time (--budget-clock cpu): give its wall time with --wall-seconds")
    model_dir = resolve_checkpoint(args.run)
    model = load_model(model_dir).eval()
    test = load_dataset("mnist", args.data_dir, train=False)
    as_trained = None
    if args.fit_class_prior:  # the run's own class prior, measured the same way, beside the fitted one
        as_trained, _ = measure(model, test, args.draws)
        as_trained["class_prior"] = model.config.class_prior
        model = with_fitted_class_prior(model, args.data_dir)
    metrics = read_metrics(args.run / "metrics.jsonl")
    wall_seconds = args.wall_seconds if args.wall_seconds is not None else metrics[-1]["elapsed_s"]
    measured, per_image = measure(model, test, args.draws)
    card = {
        "name": args.name,
        "summary": args.summary,
        "dataset": "MNIST",
        **measured,
        "parameters": sum(p.numel() for p in model.parameters()),
        "architecture": model.config.to_dict(),
        "steps": metrics[-1]["step"],
        "epochs": metrics[-1]["epoch"],
        "batch_size": train_config["batch_size"],
        "train_minutes": wall_seconds / 60,
        "cpu_hours": args.cpu_seconds / 3600,
        "threads": args.threads,
        "hardware": args.hardware,
        "command": args.command,
        "history": args.history,
        **({"as_trained": as_trained} if as_trained else {}),
    }
    labels = test.labels if model.config.num_classes else None
    report = round_trip_report(model, test.images, labels)
    card["round_trip"] = {k: report[k] for k in ("float64_images", "wrong_pixels", "worst_error", "exact_wrong_pixels")}
    assert all(math.isfinite(v) for v in (card["test_bpd"], card["test_bpd_worst"]))

    target = ROOT / "src" / "glowtorch" / "pretrained" / args.name
    target.mkdir(parents=True, exist_ok=True)
    save_model(model, target)
    card["weights_mb"] = (target / "model.safetensors").stat().st_size / 2**20
    (target / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    files = figures(model, args.run, args.name, ROOT / "docs" / "figures", args.data_dir)
    if model.config.condition:
        card["superres"] = superres_measurements(args, card)
        files["superres"] = f"model-{args.name}-superres.png"
        (target / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    else:
        build_reference(model, target, "mnist", args.data_dir, scores=per_image)  # the demo's scores and directions
    (ROOT / "docs" / f"model-{args.name}.md").write_text(card_text(card, files))
    print(json.dumps({k: v for k, v in card.items() if k != "architecture"}, indent=2))


if __name__ == "__main__":
    main()
