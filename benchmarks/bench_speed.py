"""Training and sampling speed and peak memory of Glow in each memory mode and precision.

Each measurement runs in a fresh subprocess, so its peak resident memory (ru_maxrss on CPU, or
torch.cuda.max_memory_allocated on a GPU) is its own. "saved act." is what autograd keeps for
backward after one forward (parameters excluded). "plain" is the straightforward implementation
(eager float32, NCHW, ActNorm as its own pass, standard backprop); "fast" is what GlowConfig's
defaults give; the others change one thing from "fast".

    python benchmarks/bench_speed.py                       # configs A, B and C (memory), CPU
    python benchmarks/bench_speed.py --configs C --steps 2 # just the memory comparison
    python benchmarks/bench_speed.py --device cuda --configs B,paper

Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CONFIGS = {
    "A": dict(image_shape=(1, 32, 32), levels=3, depth=8, hidden_channels=128, batch=64),
    "B": dict(image_shape=(3, 32, 32), levels=3, depth=4, hidden_channels=512, batch=16),
    "C8": dict(image_shape=(3, 32, 32), levels=3, depth=8, hidden_channels=512, batch=64),
    "C32": dict(image_shape=(3, 32, 32), levels=3, depth=32, hidden_channels=512, batch=64),
    "paper": dict(image_shape=(3, 32, 32), levels=3, depth=32, hidden_channels=512, batch=64),
}
PLAIN = dict(memory="standard", precision="float32", channels_last=False, fold_actnorm=False)
VARIANTS = {
    # The straightforward implementation: eager float32, NCHW, ActNorm as its own pass, standard backprop.
    "plain": dict(PLAIN),
    # What a user gets by default: GlowConfig's defaults (channels-last, ActNorm folded), eager.
    "fast": dict(memory="standard", precision="float32"),
    "compile": dict(memory="standard", precision="float32", compile=True),
    "reversible": dict(memory="reversible", precision="float32"),
    "checkpoint": dict(memory="checkpoint", precision="float32"),
    "bf16": dict(memory="standard", precision="bfloat16"),
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


def measure(spec: dict) -> dict:
    """Runs inside the subprocess: times training steps and sampling, reports peak memory."""
    import resource

    import torch

    from glowtorch import Glow, GlowConfig
    from glowtorch.train import TrainingObjective

    device = torch.device(spec["device"])
    torch.manual_seed(0)
    settings = dict(spec["model"])
    compile_ = settings.pop("compile", False)
    config = GlowConfig(**settings)
    model = Glow(config).to(device)
    batch = spec["batch"]
    x = (torch.rand(batch, *config.image_shape, device=device) - 0.5) * 0.9
    model.initialize(x)
    objective = TrainingObjective(model)
    optimizer = torch.optim.Adamax(model.parameters(), lr=1e-4)
    if compile_:
        objective = torch.compile(objective)
        model.compile_decode()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(spec["warmup"] + spec["steps"]):
        start = time.perf_counter()
        loss, _ = objective(x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync()
        times.append(time.perf_counter() - start)
    train_time = sum(times[spec["warmup"] :]) / spec["steps"]
    peak = (
        torch.cuda.max_memory_allocated() / 2**30
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    # After the peak is read, so this extra forward cannot raise it; eager, as autograd keeps it.
    saved = saved_activation_gib(TrainingObjective(model), x, model.parameters())
    sample_times = []
    with torch.inference_mode():
        for _ in range(1 + max(1, spec["steps"] // 2)):
            start = time.perf_counter()
            model.sample(batch, 0.7, generator=torch.Generator(device=device).manual_seed(0))
            sync()
            sample_times.append(time.perf_counter() - start)
    sample_time = sum(sample_times[1:]) / (len(sample_times) - 1)
    return {
        "train_images_per_s": batch / train_time,
        "step_s": train_time,
        "sample_images_per_s": batch / sample_time,
        "peak_gib": peak,
        "saved_gib": saved,
        "first_step_s": times[0],
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "loss_bpd": float(loss),
    }


def run_one(config_name: str, variant: str, device: str, steps: int, warmup: int) -> dict:
    settings = dict(CONFIGS[config_name])
    batch = settings.pop("batch")
    model = {**settings, **VARIANTS[variant]}
    spec = {"model": model, "batch": batch, "device": device, "steps": steps, "warmup": warmup}
    out = subprocess.run([sys.executable, __file__, "--measure", json.dumps(spec)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{config_name}/{variant} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="A,B,C", help="A, B, C (= C8 and C32 for memory), paper")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"any of {', '.join(VARIANTS)}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one measurement, JSON spec
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(json.loads(args.measure))))
        return
    names = []
    for name in args.configs.split(","):
        names += ["C8", "C32"] if name == "C" else [name]
    results: dict[tuple[str, str], dict] = {}
    header = f"{'config':6s} {'variant':10s} {'train img/s':>11s} {'step s':>7s} {'sample img/s':>12s} "
    print(header + f"{'peak GiB':>8s} {'saved act. GiB':>14s} {'params M':>8s}")
    for name in names:
        variants = args.variants.split(",")
        if name.startswith("C"):  # the memory configs: memory modes only
            variants = [v for v in variants if v in ("plain", "fast", "reversible", "checkpoint")]
        for variant in variants:
            r = run_one(name, variant, args.device, args.steps, args.warmup)
            results[(name, variant)] = r
            line = f"{name:6s} {variant:10s} {r['train_images_per_s']:11.1f} {r['step_s']:7.2f} "
            line += f"{r['sample_images_per_s']:12.1f} {r['peak_gib']:8.2f} {r['saved_gib']:14.3f} {r['params_m']:8.1f}"
            print(line, flush=True)
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
    rev8, rev32 = results.get(("C8", "reversible")), results.get(("C32", "reversible"))
    if rev8 and rev32:
        print(
            f"C: reversible K=32 / K=8: peak memory x{rev32['peak_gib'] / rev8['peak_gib']:.2f}, "
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
