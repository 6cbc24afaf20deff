"""How much of this machine glowtorch turns into training, sampling and evaluation.

For each config it counts the floating-point work of one training step (forward + backward), one
sampling pass and one evaluation pass (``torch.utils.flop_counter``, through the public API), measures
the machine's practical peak in the same run (a dense 3x3 convolution, forward and both backward
convolutions, and a 2048x2048 matrix product, per precision), and times glowtorch doing the work as
its commands do: a ``Trainer``'s steps (batches, optimizer, EMA and all; compiled where the config's
preset compiles), ``Glow.sample`` and ``evaluate.score_images``. "The limit" is the work at the peak:
the fraction printed is limit / measured time, 1.0 meaning the machine's practical peak.

Then where a training step's time goes: every convolution of the step timed alone (forward and
backward, the layout the model uses), and a profile of the whole step by kind of operation, with what
no operation accounts for (Python, autograd's bookkeeping, the dispatcher) as its own line.

    python benchmarks/bench_limit.py                          # mnist-cpu, A, B, mnist; float32 and auto
    python benchmarks/bench_limit.py --configs mnist-cpu --precisions float32
    python benchmarks/bench_limit.py --markdown               # the summary as docs/speed.md's table

Configs: ``mnist-cpu`` and ``mnist`` are the presets (28x28 MNIST-sized random images; the speed does
not depend on the pixels), A and B are bench_speed.py's (A: 1x32x32 L3 K8 width 128 batch 64;
B: 3x32x32 L3 K4 width 512 batch 16). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from glowtorch import GlowConfig, keep_freed_memory
from glowtorch.data import Dataset
from glowtorch.evaluate import score_images
from glowtorch.precision import resolve_precision
from glowtorch.presets import load_preset
from glowtorch.train import TrainConfig, Trainer

# name -> (image shape, model values, training values)
CONFIGS: dict[str, tuple[tuple[int, int, int], dict, dict]] = {
    "A": ((1, 32, 32), dict(levels=3, depth=8, hidden_channels=128), dict(batch_size=64)),
    "B": ((3, 32, 32), dict(levels=3, depth=4, hidden_channels=512), dict(batch_size=16)),
}
for _preset in ("mnist-cpu", "mnist"):
    _values = load_preset(_preset)
    CONFIGS[_preset] = ((1, 28, 28), _values["model"], _values["train"])
TRAIN_KEYS = ("batch_size", "optimizer", "lr", "ema_decay", "shift", "compile")


def cpu_model() -> str:
    for line in open("/proc/cpuinfo") if platform.system() == "Linux" else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def timed(fn, repeats: int, min_seconds: float = 0.0, warm: bool = True) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls (at least ``min_seconds`` in all), after one warm call
    (unless ``warm`` is False: the caller has just run it)."""
    if warm:
        fn()
    times: list[float] = []
    began = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - began < min_seconds:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def flops(fn) -> float:
    """Floating-point operations of ``fn()`` (multiply-add = 2), as counted by ``FlopCounterMode``."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


# --------------------------------------------------------------------------- the machine's peak
def conv_rate(in_ch: int, out_ch: int, size: int, batch: int, kernel: int, dtype: torch.dtype, repeats: int = 5,
              channels_last: bool = True) -> float:  # fmt: skip
    """FLOP/s of one convolution, forward and both backward convolutions (input and weight gradients)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, in_ch, size, size, dtype=dtype).to(memory_format=fmt).requires_grad_()
    w = torch.randn(out_ch, in_ch, kernel, kernel, dtype=dtype).to(memory_format=fmt).requires_grad_()
    b = torch.zeros(out_ch, dtype=dtype, requires_grad=True)
    grad = torch.randn(batch, out_ch, size, size, dtype=dtype).to(memory_format=fmt)

    def run():
        F.conv2d(x, w, b, padding=kernel // 2).backward(grad)

    work = 3 * 2 * batch * out_ch * in_ch * kernel * kernel * size * size
    return work / timed(run, repeats, 0.3)


def matmul_rate(dtype: torch.dtype, largest: int = 2048) -> float:
    """FLOP/s of an n x n matrix product, n doubled from 256 up to ``largest`` while one product takes under
    50 ms (a CPU slow in ``dtype`` is measured at a size it finishes)."""
    n = 256
    while True:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        seconds = timed(lambda a=a, b=b: a @ b, 3)
        if n >= largest or seconds > 0.05:
            return 2 * n**3 / timed(lambda a=a, b=b: a @ b, 5, 0.3)
        n *= 2


def machine_peak(dtype: torch.dtype) -> dict[str, float]:
    """The practical peak for ``dtype``: a dense 3x3 convolution (128->128, 14x14, batch 32, forward +
    backward) and a matrix product of up to 2048x2048; the larger is the peak."""
    slow = matmul_rate(dtype, 512) < 20e9  # a precision this CPU has no fast kernels for: fewer repetitions
    conv = conv_rate(128, 128, 14, 8 if slow else 32, 3, dtype, repeats=2 if slow else 5)
    matmul = matmul_rate(dtype)
    return {"conv": conv, "matmul": matmul, "peak": max(conv, matmul)}


# --------------------------------------------------------------------------- a config's trainer
@dataclass
class Bench:
    name: str
    trainer: Trainer
    loss_fn: torch.nn.Module
    batch: int
    compiled: bool
    rows: dict = field(default_factory=dict)


def make_trainer(
    name: str, precision: str, folder: str, compile_: bool | None, dist=None, configs: dict | None = None
) -> Bench:
    """A started ``Trainer`` of config ``name`` (of ``configs``, default ``CONFIGS``) on random images, its run
    folder ``folder``; ``dist`` (a ``glowtorch.distributed.Distributed``) for one process of a DDP job."""
    shape, model_values, train_values = (configs or CONFIGS)[name]
    values = {k: v for k, v in train_values.items() if k in TRAIN_KEYS}
    if compile_ is not None:
        values["compile"] = compile_
    batch = values["batch_size"]
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (max(4 * batch, 512), *shape), generator=generator, dtype=torch.uint8)
    # ActNorm initializes from one batch: what it starts from does not change how fast a step runs
    config = TrainConfig(**values, steps=10**6, precision=precision, init_images=batch)
    trainer = Trainer(GlowConfig(image_shape=shape, **model_values), config, Dataset(images), None, folder,
                      log=lambda line: None, dist=dist)  # fmt: skip
    trainer.start()
    return Bench(name, trainer, trainer.loss_function(), batch, bool(values.get("compile")))


def train_step(bench: Bench) -> None:
    bench.trainer.train_step(bench.loss_fn)
    bench.trainer.step += 1


def step_flops(bench: Bench) -> float:
    """The work of one training step's forward and backward (the optimizer's few FLOPs are not counted)."""
    trainer = bench.trainer
    x, y, _, context, noise = trainer.batch(trainer.step)

    def run():
        loss, _ = trainer.objective(x, y, context, noise)
        loss.backward()

    work = flops(run)
    trainer.optimizer.zero_grad(set_to_none=True)
    return work


# --------------------------------------------------------------------------- convolutions alone
class ConvRecorder(TorchDispatchMode):
    """Records the arguments of every forward convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution.default:
            x, w, bias, stride, padding, dilation, transposed, _, groups = args[:9]
            if not transposed and tuple(dilation) == (1, 1) and groups == 1:
                channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and x.stride(1) == 1
                self.calls.append((tuple(x.shape), tuple(w.shape), bias is not None, tuple(stride), tuple(padding),
                                   x.dtype, channels_last))  # fmt: skip
        return func(*args, **(kwargs or {}))


def convolutions_alone(bench: Bench, repeats: int) -> list[dict]:
    """Each distinct convolution of a training step (eager), timed alone forward + backward."""
    trainer = bench.trainer
    x, y, _, context, noise = trainer.batch(trainer.step)
    recorder = ConvRecorder()
    with recorder:
        loss, _ = trainer.objective(x, y, context, noise)
    del loss
    counts: dict[tuple, int] = {}
    for call in recorder.calls:
        counts[call] = counts.get(call, 0) + 1
    rows = []
    for (x_shape, w_shape, has_bias, stride, padding, dtype, channels_last), count in counts.items():
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        xs = torch.randn(x_shape, dtype=dtype).to(memory_format=fmt).requires_grad_()
        ws = torch.randn(w_shape, dtype=dtype).to(memory_format=fmt).requires_grad_()
        bs = torch.zeros(w_shape[0], dtype=dtype, requires_grad=True) if has_bias else None
        out = F.conv2d(xs, ws, bs, stride, padding)
        grad = torch.randn_like(out)

        def run(xs=xs, ws=ws, bs=bs, grad=grad, stride=stride, padding=padding):
            F.conv2d(xs, ws, bs, stride, padding).backward(grad)

        seconds = timed(run, repeats, 0.05)
        work = 3 * 2 * out.numel() * w_shape[1] * w_shape[2] * w_shape[3]
        rows.append(dict(x=x_shape, w=w_shape, count=count, gflop=count * work / 1e9, ms=count * seconds * 1e3,
                         rate=work / seconds / 1e9, layout="NHWC" if channels_last else "NCHW"))  # fmt: skip
    return sorted(rows, key=lambda r: -r["ms"])


# --------------------------------------------------------------------------- profile of a step
KINDS = (
    ("convolution forward", ("mkldnn_convolution", "convolution_pointwise", "_convolution")),
    ("convolution backward", ("convolution_backward",)),
    ("matrix products", ("aten::mm", "aten::addmm", "aten::bmm", "linalg", "aten::_linalg", "aten::matmul")),
    ("optimizer and EMA", ("_fused_adam", "_foreach_", "aten::lerp")),
    ("copies and layout", ("aten::copy_", "aten::cat", "aten::clone", "aten::contiguous", "aten::_to_copy")),
    ("compiled kernels", ("graph_", "Torch-Compiled", "CompiledFunction", "inductor")),
)


def kind_of(key: str) -> str:
    for kind, needles in KINDS:
        if any(n in key for n in needles):
            return kind
    if key.startswith("aten::"):
        return "other operations (elementwise, reductions, log-determinants)"
    return "autograd and dispatch bookkeeping"


def profile_of(fn, repeats: int) -> dict[str, float]:
    """Milliseconds per call of ``fn`` by kind of operation (self time), and what no operation accounts for."""
    began = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            fn()
    wall = (time.perf_counter() - began) / repeats
    spent: dict[str, float] = {}
    for event in prof.key_averages():
        if event.key.startswith(("ProfilerStep", "Optimizer.", "## ")):
            continue
        kind = kind_of(event.key)
        spent[kind] = spent.get(kind, 0.0) + event.self_cpu_time_total / 1e3 / repeats
    spent["Python and everything no operation accounts for"] = max(wall * 1e3 - sum(spent.values()), 0.0)
    spent["(wall time, profiled)"] = wall * 1e3
    return spent


# --------------------------------------------------------------------------- one config
def measure(name: str, precision: str, args, peaks: dict) -> dict:
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stderr(io.StringIO()):
        bench = make_trainer(name, precision, folder, args.compile)
        trainer, batch = bench.trainer, bench.batch
        chosen = trainer.precision.precision
        peak = peaks[chosen]["peak"]
        repeats = 1 if name == "mnist" else args.steps  # the paper's preset: seconds per step
        for _ in range(0 if name == "mnist" else args.warmup):  # warmup, and compilation where compiled
            train_step(bench)
        work = step_flops(bench)  # each count is also the warm call of the timing after it
        step_s = timed(lambda: train_step(bench), repeats, warm=False)
        ema = trainer.ema.eval()
        sample_batch = batch

        def sample():
            with torch.no_grad():
                ema.sample(sample_batch, temperature=0.7)

        sample_work, sample_s = flops(sample), timed(sample, repeats, warm=False)
        images = trainer.train_data.images[: min(args.eval_images, 8 * batch) if name != "mnist" else batch]
        evaluate = lambda: score_images(ema, images, batch_size=min(500, len(images)))  # noqa: E731
        eval_work, eval_s = flops(evaluate), timed(evaluate, min(2, repeats), warm=False)
        eval_peak = peaks["float32"]["peak"]  # every likelihood is computed in float32
        result = dict(
            name=name, precision=chosen, compiled=bench.compiled, batch=batch,
            step_gflop=work / 1e9, step_ms=step_s * 1e3, step_fraction=work / peak / step_s, peak=peak / 1e9,
            sample_gflop=sample_work / 1e9, sample_ms=sample_s * 1e3, sample_fraction=sample_work / peak / sample_s,
            eval_images=len(images), eval_gflop=eval_work / 1e9, eval_ms=eval_s * 1e3,
            eval_fraction=eval_work / eval_peak / eval_s,
        )  # fmt: skip
        if args.detail and name != "mnist":
            result["convolutions"] = convolutions_alone(bench, 3)
            result["profile"] = profile_of(lambda: train_step(bench), 2)
            result["sample_profile"] = profile_of(sample, 1)
            result["eval_profile"] = profile_of(evaluate, 1)
    result["seconds"] = time.perf_counter() - began  # the measurement's own time, compilation included
    return result


def report(r: dict) -> None:
    how = r["precision"] + (" (auto chose it)" if r["asked"] == "auto" else "")
    print(f"\n{r['name']}, {how}, {'compiled' if r['compiled'] else 'eager'}, batch {r['batch']} "
          f"(measured in {r['seconds']:.0f} s):")  # fmt: skip
    for what, key in (("training step", "step"), ("sampling pass", "sample")):
        limit_ms = r[f"{key}_gflop"] / r["peak"] * 1e3
        print(f"  {what}: {r[f'{key}_gflop']:.2f} GFLOP in {r[f'{key}_ms']:.1f} ms "
              f"({r[f'{key}_gflop'] / r[f'{key}_ms'] * 1e3:.0f} GFLOP/s); limit {limit_ms:.1f} ms at "
              f"{r['peak']:.0f} GFLOP/s: {r[f'{key}_fraction']:.2f} of the limit")  # fmt: skip
    print(f"  evaluation (score_images, {r['eval_images']} images, float32): {r['eval_gflop']:.2f} GFLOP in "
          f"{r['eval_ms']:.0f} ms: {r['eval_fraction']:.2f} of the float32 limit")  # fmt: skip
    if "convolutions" in r:
        rows = r["convolutions"]
        print(f"  convolutions of the step, each timed alone (forward + backward), {sum(c['ms'] for c in rows):.0f} "
              f"ms in all:")  # fmt: skip
        for c in rows:
            print(f"    {c['count']:3d} x input {c['x']} weight {c['w']} {c['layout']}: {c['ms']:7.1f} ms, "
                  f"{c['gflop']:.2f} GFLOP, {c['rate']:.0f} GFLOP/s")  # fmt: skip
    for key, what in (("profile", "a training step"), ("sample_profile", "a sampling pass"),
                      ("eval_profile", "the evaluation")):  # fmt: skip
        if key in r:
            print(f"  profile of {what} (ms, self time by kind):")
            for kind, ms in sorted(r[key].items(), key=lambda kv: -kv[1]):
                if ms >= 0.05:
                    print(f"    {ms:7.1f}  {kind}")


def markdown(results: list[dict], peaks: dict) -> None:
    print(f"\n{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}; practical peak: "
          + "; ".join(f"{p} {v['peak'] / 1e9:.0f} GFLOP/s (conv {v['conv'] / 1e9:.0f}, matmul {v['matmul'] / 1e9:.0f})"
                      for p, v in peaks.items()))  # fmt: skip
    print("\n| config | precision | step GFLOP | step ms | of the limit | sample ms | of the limit | eval "
          "images/s | of the limit |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        precision = r["precision"] + (" (auto)" if r["asked"] == "auto" else "")
        name = r["name"] + (" (compiled)" if r["compiled"] else "")
        print(f"| {name} | {precision} | {r['step_gflop']:.2f} | {r['step_ms']:.0f} | {r['step_fraction']:.2f} | "
              f"{r['sample_ms']:.0f} | {r['sample_fraction']:.2f} | {r['eval_images'] / r['eval_ms'] * 1e3:.0f} | "
              f"{r['eval_fraction']:.2f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="mnist-cpu,A,B,mnist")
    parser.add_argument("--precisions", default="float32,auto")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps (1 for mnist)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation included)")
    parser.add_argument("--eval-images", type=int, default=500, help="at most (8 batches' worth)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="compile the training step (default: as the config's preset does)")  # fmt: skip
    parser.add_argument("--no-detail", dest="detail", action="store_false", help="skip the per-convolution "
                        "timings and the profile")  # fmt: skip
    parser.add_argument("--markdown", action="store_true", help="also print the summary as a markdown table")
    args = parser.parse_args()
    keep_freed_memory()  # as the glowtorch command does
    began = time.perf_counter()
    peaks = {"float32": machine_peak(torch.float32), "bfloat16": machine_peak(torch.bfloat16)}
    print(f"{cpu_model()}; {torch.get_num_threads()} threads; torch {torch.__version__}")
    for precision, value in peaks.items():
        print(f"practical peak, {precision}: 3x3 conv 128->128 14x14 b32 fwd+bwd {value['conv'] / 1e9:.0f} GFLOP/s, "
              f"2048 matmul {value['matmul'] / 1e9:.0f} GFLOP/s")  # fmt: skip
    results = []
    for name in args.configs.split(","):
        done: dict[str, dict] = {}
        for precision in args.precisions.split(","):
            chosen = precision
            if precision == "auto":  # the probe alone first: a choice already measured is not measured again
                shape, model_values, train_values = CONFIGS[name]
                config = GlowConfig(image_shape=shape, **model_values)
                choice = resolve_precision("auto", config, "cpu", train_values["batch_size"])
                print(f"\n{name}: {choice.summary()}")
                chosen = choice.precision
            if chosen in done:
                results.append({**done[chosen], "asked": precision})
                continue
            result = measure(name, chosen, args, peaks)
            result["asked"] = precision
            done[chosen] = result
            report(result)
            results.append(result)
    if args.markdown:
        markdown(results, peaks)
    print(f"\n({time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    main()
