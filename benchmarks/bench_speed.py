"""Training and sampling speed and peak memory of Glow in each memory mode and precision.

Step and sampling times are medians over the timed repetitions. Each measurement runs in a
fresh subprocess, so its peak resident memory (ru_maxrss on CPU, or
torch.cuda.max_memory_allocated on a GPU) is its own. "state" is parameters, gradients and optimizer
state; "work" is the peak less that state and less the process's resident memory before the model was
built (the interpreter and libraries): the activations and workspace of a step, the part that depth
can make grow. "saved act." is what autograd keeps for backward after one forward (parameters
excluded). GFLOP/s counts the model's useful work (the plain path's convolutions and matrix products
per image, from torch.utils.flop_counter) at the measured speed; the lines after the table give the
device's own float32, bfloat16 and float16 convolution throughput, the ceiling for any variant.
"plain" is the straightforward implementation (eager float32, NCHW, standard backprop, Adamax's
per-parameter loop, malloc left alone; ActNorm is folded into the convolutions in every variant, as
the library always does); "fast" is what ComputeConfig's defaults and the glowtorch command give
(including glowtorch.keep_freed_memory and the trainer's Adamax: foreach, or
the per-parameter loop in the memory-saving modes); the others change one thing from "fast".
bfloat16 cannot beat float32 on a CPU whose bfloat16 dot-product instruction is slower than its
float32 FMA: benchmarks/isa_peak.c times the instructions themselves.

    python benchmarks/bench_speed.py                       # configs A, B and C (memory), CPU
    python benchmarks/bench_speed.py --configs C --steps 2 # just the memory comparison
    python benchmarks/bench_speed.py --device cuda --configs B,paper
    python benchmarks/bench_speed.py --configs A,B,C32 --variants fast,auto,reversible,rosinality \
        --rosinality /tmp/glow-pytorch --repeats 3     # against rosinality/glow-pytorch's own code

The "rosinality" variant runs rosinality/glow-pytorch (a checkout given by --rosinality, commit 97081ff;
nothing is downloaded) at the same architecture: its ``Glow`` with affine coupling and LU-decomposed 1x1
convolutions, its coupling width set to the config's, Adam and the loss of its train.py, sampling with
``reverse`` at temperature 0.7; eager float32, as its train.py runs. With --repeats N every
measurement is made N times, the variants alternating, and the table gives each figure's median.

Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

CONFIGS = {
    "A": dict(image_shape=(1, 32, 32), levels=3, depth=8, hidden_channels=128, batch=64),
    "B": dict(image_shape=(3, 32, 32), levels=3, depth=4, hidden_channels=512, batch=16),
    "C8": dict(image_shape=(3, 32, 32), levels=3, depth=8, hidden_channels=512, batch=64),
    "C32": dict(image_shape=(3, 32, 32), levels=3, depth=32, hidden_channels=512, batch=64),
    "paper": dict(image_shape=(3, 32, 32), levels=3, depth=32, hidden_channels=512, batch=64),
    # benchmarks/gpu_check.py --dry-run: the same code paths at a size a CPU measures in seconds
    "tiny": dict(image_shape=(1, 8, 8), levels=2, depth=2, hidden_channels=16, batch=16),
    "tiny32": dict(image_shape=(1, 8, 8), levels=2, depth=8, hidden_channels=16, batch=16),
}
PLAIN = dict(memory="standard", precision="float32", channels_last=False)
VARIANTS = {
    # The straightforward implementation: eager float32, NCHW, standard backprop.
    "plain": dict(PLAIN),
    # What a user gets by default: ComputeConfig's defaults (channels-last), eager.
    "fast": dict(memory="standard", precision="float32"),
    "compile": dict(memory="standard", precision="float32", compile=True),
    "reversible": dict(memory="reversible", precision="float32"),
    "checkpoint": dict(memory="checkpoint", precision="float32"),
    "bf16": dict(memory="standard", precision="bfloat16"),
    # What `glowtorch train` does by default: bfloat16 where the device's probe finds it faster.
    "auto": dict(memory="standard", precision="auto"),
}


def saved_activation_gib(objective, x, parameters) -> float:
    """GiB of tensors autograd keeps for backward after one forward (storages counted once,
    parameters excluded): the memory that grows with depth unless activations are recomputed."""
    import torch

    skip = {p.untyped_storage().data_ptr() for p in parameters}
    saved: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = objective(x)
    del loss
    return sum(saved.values()) / 2**30


def model_flops(settings: dict) -> tuple[float, float]:
    """FLOPs per image of one training step (forward + backward) and of sampling, plain path."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from glowtorch import ComputeConfig, Glow, GlowConfig
    from glowtorch.train import TrainingObjective

    torch.manual_seed(0)
    model = Glow(GlowConfig(**settings), ComputeConfig(**PLAIN))
    x = (torch.rand(2, *model.config.image_shape) - 0.5) * 0.9
    model.initialize(x)
    with FlopCounterMode(display=False) as train:
        loss, _ = TrainingObjective(model)(x)
        loss.backward()
    with FlopCounterMode(display=False) as sample, torch.no_grad():
        model.sample(2, 0.7)
    return train.get_total_flops() / 2, sample.get_total_flops() / 2


def device_peak(device: str) -> dict[str, float]:
    """GFLOP/s of a 3x3, 512-channel convolution (batch 16, 16x16, channels-last) in float32, bfloat16
    and float16: the throughput the coupling networks' largest convolutions can reach on this device."""
    import torch
    import torch.nn.functional as F

    result = {}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = torch.randn(16, 512, 16, 16, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(512, 512, 3, 3, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        times = []
        for _ in range(12):
            start = time.perf_counter()
            F.conv2d(x, w, padding=1)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        result[str(dtype).removeprefix("torch.")] = 2 * 16 * 512 * 512 * 9 * 256 / min(times[2:]) / 1e9
    return result


def run_timed(fn, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` (which synchronizes the device itself)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def state_gib(model, optimizer) -> float:
    """GiB of parameters, gradients and optimizer state."""
    import torch

    tensors = [*model.parameters(), *(p.grad for p in model.parameters() if p.grad is not None)]
    tensors += [t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**30


def measurement(spec: dict, model, optimizer, times: list[float], sample_times: list[float], peak: float,
                baseline: float, saved: float, loss) -> dict:  # fmt: skip
    """One measurement's figures: medians of the timed steps (after the warmup) and sampling passes (after
    the first), memory, and the architecture's work as counted on glowtorch's plain path."""
    batch, state = spec["batch"], state_gib(model, optimizer)
    train_time = statistics.median(times[spec["warmup"] :])  # robust to a stray slow step
    sample_time = statistics.median(sample_times[1:])
    train_flops, sample_flops = model_flops(spec["architecture"])
    return {
        "train_images_per_s": batch / train_time,
        "step_s": train_time,
        "sample_images_per_s": batch / sample_time,
        "peak_gib": peak,
        "state_gib": state,
        "work_gib": max(0.0, peak - state - baseline),  # resident-set noise can make it slightly negative
        "saved_gib": saved,
        "train_gflop": train_flops / 1e9,
        "sample_gflop": sample_flops / 1e9,
        "first_step_s": times[0],
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "loss_bpd": float(loss.detach()),
    }


def measure(spec: dict) -> dict:
    """Runs inside the subprocess: times training steps and sampling, reports peak memory."""
    import resource

    import torch

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20 if spec["device"] == "cpu" else 0.0
    if not spec["plain"]:  # what the glowtorch command does; the plain path leaves malloc alone
        from glowtorch import keep_freed_memory

        keep_freed_memory()

    from glowtorch import ComputeConfig, Glow, GlowConfig
    from glowtorch.train import TrainingObjective, make_optimizer

    device = torch.device(spec["device"])
    torch.manual_seed(0)
    settings = dict(spec["model"])
    compile_ = settings.pop("compile", False)
    compute = {k: settings.pop(k) for k in ("memory", "precision", "channels_last") if k in settings}
    config = GlowConfig(**settings)
    if compute.get("precision") == "auto":
        from glowtorch.precision import resolve_precision

        compute["precision"] = resolve_precision("auto", config, device, spec["batch"]).precision
    compute = ComputeConfig(**compute)
    model = Glow(config, compute).to(device)
    batch = spec["batch"]
    x = (torch.rand(batch, *config.image_shape, device=device) - 0.5) * 0.9
    model.initialize(x)
    objective = TrainingObjective(model)
    if spec["plain"]:  # Adamax as the paper; the straightforward per-parameter loop
        optimizer = torch.optim.Adamax(model.parameters(), lr=1e-4)
    else:  # what glowtorch's trainer builds: foreach, or the loop in the memory-saving modes
        optimizer = make_optimizer("adamax", list(model.parameters()), 1e-4, compute.memory != "standard")
    if compile_:
        objective = torch.compile(objective)
        model.compile_decode()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        nonlocal loss
        loss, _ = objective(x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync()

    loss = None
    times = run_timed(step, spec["warmup"] + spec["steps"])
    peak = (
        torch.cuda.max_memory_allocated() / 2**30
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    # After the peak is read, so this extra forward cannot raise it; eager, as autograd keeps it.
    saved = saved_activation_gib(TrainingObjective(model), x, model.parameters())

    def sample() -> None:
        model.sample(batch, 0.7, generator=torch.Generator(device=device).manual_seed(0))
        sync()

    with torch.inference_mode():
        sample_times = run_timed(sample, 1 + max(5, spec["steps"]))
    return measurement(spec, model, optimizer, times, sample_times, peak, baseline, saved, loss)


def measure_rosinality(spec: dict) -> dict:
    """Runs inside the subprocess: the same measurements of rosinality/glow-pytorch's own model and
    training step (its train.py's loss and Adam), at the config's architecture."""
    import importlib.util
    import math
    import resource

    import torch

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    path = spec["rosinality"] + "/model.py"
    module_spec = importlib.util.spec_from_file_location("rosinality_model", path)
    port = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(port)
    arch = spec["architecture"]
    channels, size = arch["image_shape"][0], arch["image_shape"][1]
    torch.manual_seed(0)
    model = port.Glow(channels, arch["depth"], arch["levels"], affine=True, conv_lu=True)
    for block in model.blocks:  # its coupling width is fixed at 512 by a default argument: set the config's
        for flow in block.flows:
            flow.coupling = port.AffineCoupling(flow.coupling.net[0].in_channels * 2, arch["hidden_channels"])
    batch, n_bins, n_pixel = spec["batch"], 2.0**8, channels * size * size
    x = (torch.rand(batch, channels, size, size) - 0.5) * 0.9
    x = x + torch.rand_like(x) / n_bins
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def loss_of(x):  # its train.py's calc_loss, in bits per dimension
        log_p, logdet, _ = model(x)
        loss = -math.log(n_bins) * n_pixel + logdet + log_p
        return (-loss / (math.log(2) * n_pixel)).mean()

    with torch.no_grad():
        model(x)  # ActNorm initializes from the first batch, as in its training

    def step() -> None:
        nonlocal loss
        loss = loss_of(x)
        model.zero_grad()
        loss.backward()
        optimizer.step()

    loss = None
    times = run_timed(step, spec["warmup"] + spec["steps"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    with torch.no_grad():
        shapes = [z.shape for z in model(x)[2]]
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        sample_times = run_timed(
            lambda: model.reverse([0.7 * torch.randn(shape, generator=generator) for shape in shapes]),
            1 + max(5, spec["steps"]),
        )
    return measurement(spec, model, optimizer, times, sample_times, peak, baseline, float("nan"), loss)


def run_one(
    config_name: str, variant: str, device: str, steps: int, warmup: int, rosinality: str | None = None
) -> dict:
    settings = dict(CONFIGS[config_name])
    batch = settings.pop("batch")
    model = {**settings, **VARIANTS.get(variant, {})}
    spec = {"model": model, "architecture": settings, "batch": batch, "device": device, "steps": steps}
    spec["warmup"] = warmup
    spec["plain"] = variant == "plain"
    if variant == "rosinality":
        if rosinality is None or device != "cpu":
            raise SystemExit("the rosinality variant needs --rosinality CHECKOUT (rosinality/glow-pytorch) on the CPU")
        spec["rosinality"] = rosinality
    out = subprocess.run([sys.executable, __file__, "--measure", json.dumps(spec)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{config_name}/{variant} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="A,B,C", help="A, B, C (= C8 and C32 for memory), paper")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"any of {', '.join(VARIANTS)}, rosinality")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rosinality", help="a checkout of rosinality/glow-pytorch, for the rosinality variant")
    parser.add_argument("--repeats", type=int, default=1, help="measure each N times, alternating; medians")
    parser.add_argument("--json", help="also write the measurements to this JSON file")
    parser.add_argument("--table-only", action="store_true", help="stop after the table (no peak or probe lines)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one measurement, JSON spec
    args = parser.parse_args()
    if args.measure:
        spec = json.loads(args.measure)
        print(json.dumps(measure_rosinality(spec) if "rosinality" in spec else measure(spec)))
        return
    names = []
    for name in args.configs.split(","):
        names += ["C8", "C32"] if name == "C" else [name]
    results: dict[tuple[str, str], dict] = {}
    header = f"{'config':6s} {'variant':10s} {'train img/s':>11s} {'GFLOP/s':>7s} {'step s':>7s} {'sample img/s':>12s} "
    print(header + f"{'peak GiB':>8s} {'state GiB':>9s} {'work GiB':>8s} {'saved act. GiB':>14s} {'params M':>8s}")
    plan = []
    for name in names:
        variants = args.variants.split(",")
        if name.startswith("C"):  # the memory configs: memory modes only
            variants = [v for v in variants if v in ("plain", "fast", "reversible", "checkpoint", "rosinality")]
        plan += [(name, variant) for variant in variants]
    runs: dict[tuple[str, str], list[dict]] = {key: [] for key in plan}
    for round_ in range(args.repeats):  # alternating: every variant once per round
        for name, variant in plan if round_ % 2 == 0 else plan[::-1]:
            runs[(name, variant)].append(run_one(name, variant, args.device, args.steps, args.warmup, args.rosinality))
    for name, variant in plan:
        r = {key: statistics.median(m[key] for m in runs[(name, variant)]) for key in runs[(name, variant)][0]}
        results[(name, variant)] = r
        gflops = r["train_images_per_s"] * r["train_gflop"]
        line = f"{name:6s} {variant:10s} {r['train_images_per_s']:11.1f} {gflops:7.0f} {r['step_s']:7.2f} "
        line += f"{r['sample_images_per_s']:12.1f} {r['peak_gib']:8.2f} {r['state_gib']:9.2f} {r['work_gib']:8.2f} "
        line += f"{r['saved_gib']:14.3f} {r['params_m']:8.1f}"
        print(line, flush=True)
    if args.json:
        rows = [{"config": name, "variant": variant, **r} for (name, variant), r in results.items()]
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "rows": rows}, f, indent=2)
    if args.table_only:
        return
    print()
    # Measured last: ru_maxrss carries over from parent to child, so this process stays small until then.
    peak = device_peak(args.device)
    print(", ".join(f"{dtype} 3x3 conv: {value:.0f} GFLOP/s" for dtype, value in peak.items()))
    from glowtorch import GlowConfig
    from glowtorch.precision import resolve_precision

    for name in names:
        settings = dict(CONFIGS[name])
        batch = settings.pop("batch")
        print(f"{name}: auto {resolve_precision('auto', GlowConfig(**settings), args.device, batch).summary()}")
    for name in names:
        r = next(r for (n, _), r in results.items() if n == name)
        print(
            f"{name}: {r['train_gflop']:.3f} GFLOP per training image, {r['sample_gflop']:.3f} per sample; "
            f"at the float32 conv peak: {peak['float32'] / r['train_gflop']:.0f} train img/s, "
            f"{peak['float32'] / r['sample_gflop']:.0f} sample img/s"
        )
    print()
    for name in names:
        plain = results.get((name, "plain"))
        for variant in args.variants.split(","):
            r = results.get((name, variant))
            if plain and r and variant != "plain":
                speed = r["train_images_per_s"] / plain["train_images_per_s"]
                sampling = r["sample_images_per_s"] / plain["sample_images_per_s"]
                memory = r["peak_gib"] / plain["peak_gib"]
                print(
                    f"{name}: {variant} / plain: training x{speed:.2f}, sampling x{sampling:.2f}, memory x{memory:.2f}"
                )
    for name in names:
        port = results.get((name, "rosinality"))
        for variant in args.variants.split(","):
            r = results.get((name, variant))
            if port and r and variant != "rosinality":
                training = r["train_images_per_s"] / port["train_images_per_s"]
                print(
                    f"{name}: {variant} / rosinality: training x{training:.2f}, "
                    f"sampling x{r['sample_images_per_s'] / port['sample_images_per_s']:.2f}, "
                    f"peak memory x{r['peak_gib'] / port['peak_gib']:.2f}"
                )
    rev8, rev32 = results.get(("C8", "reversible")), results.get(("C32", "reversible"))
    if rev8 and rev32:
        print(
            f"C: reversible K=32 / K=8: peak memory x{rev32['peak_gib'] / rev8['peak_gib']:.2f}, "
            f"work (peak less state and baseline) {rev8['work_gib']:.2f} -> {rev32['work_gib']:.2f} GiB, "
            f"saved activations x{rev32['saved_gib'] / max(rev8['saved_gib'], 1e-9):.2f}, "
            f"parameters x{rev32['params_m'] / rev8['params_m']:.2f}"
        )
    for baseline in ("plain", "fast"):
        base = results.get(("C32", baseline))
        if rev32 and base:
            print(
                f"C: K=32 reversible / {baseline}: peak memory x{rev32['peak_gib'] / base['peak_gib']:.2f}, "
                f"step time x{rev32['step_s'] / base['step_s']:.2f}"
            )


if __name__ == "__main__":
    main()
