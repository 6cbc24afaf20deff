"""The prepared store measured: prepare throughput, train start-up, resident memory per process and
batch gathering, on synthetic data (nothing is downloaded)::

    python benchmarks/bench_data.py --work /path/with/space [--images 100000,2500000] [--pngs 4000]

For each size in ``--images`` it writes a synthetic store of that many 64x64x3 images (2.5 million is
about 31 GB on disk, more than this machine's memory) and measures, with ``glowtorch train --dataset
prepared`` on a small model:

- start-up: from opening the store to the end of the first training step (in this process);
- resident memory of each process after 40 steps, with 1 and with 2 processes (torchrun, gloo): RssAnon
  (the process's own memory) and RssFile (pages of mapped files, shared between processes);

then the time to gather random batches of 64 from a store in the page cache and from the same images
held in memory, and the throughput of ``glowtorch prepare`` on a folder of ``--pngs`` PNG files.
The stores are deleted afterwards unless ``--keep``.
"""

from __future__ import annotations

import time

PROCESS_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

SIZE = 64
BLOCK = 20_000  # images per written block


def write_synthetic_store(directory: Path, count: int, test_count: int = 1000) -> float:
    """A store of ``count`` random 64x64x3 training images (one random block repeated) and a small test
    split; returns the seconds it took."""
    from glowtorch.data.store import FORMAT, MANIFEST, VERSION, ArrayWriter

    start = time.perf_counter()
    rng = np.random.default_rng(0)
    block = rng.integers(0, 256, (BLOCK, 3, SIZE, SIZE), dtype=np.uint8)
    splits = {}
    for split, n in (("train", count), ("test", test_count)):
        (directory / split).mkdir(parents=True)
        writer = ArrayWriter(directory / split / "images.npy", n, (3, SIZE, SIZE))
        for first in range(0, n, BLOCK):
            writer.write(block[: min(BLOCK, n - first)])
        writer.close()
        splits[split] = {"count": n, "shape": [n, 3, SIZE, SIZE], "images": "images.npy", "skipped": 0}
    manifest = {"format": FORMAT, "version": VERSION, "dataset": "synthetic", "source": None,
                "source_checksum": None, "image_size": SIZE, "channels": 3, "splits": splits}  # fmt: skip
    (directory / MANIFEST).write_text(json.dumps(manifest))
    return time.perf_counter() - start


TRAIN = ["--levels", "1", "--depth", "1", "--hidden-channels", "16", "--batch-size", "16", "--init-images", "64",
         "--steps", "40", "--eval-every", "0", "--no-progress", "--precision", "float32", "--no-compile",
         "--eval-batch-size", "50"]  # fmt: skip


def rss(pid: int) -> tuple[float, float]:
    """(RssAnon, RssFile) of ``pid`` in MiB."""
    values = dict(re.findall(r"^(Rss\w+):\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M))
    return int(values.get("RssAnon", 0)) / 1024, int(values.get("RssFile", 0)) / 1024


def run_training(store: Path, out: Path, processes: int) -> dict:
    """Trains 40 steps on the store in a new process (or ``processes`` under torchrun); returns the wall
    time and each worker's peak resident memory."""
    shutil.rmtree(out, ignore_errors=True)
    glowtorch = [sys.executable, "-m", "glowtorch"]
    if processes > 1:
        glowtorch = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(processes),
            "-m",
            "glowtorch",
        ]
    command = [*glowtorch, "train", "--dataset", "prepared", "--data-dir", str(store), "--out", str(out), *TRAIN]
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    peaks: dict[int, tuple[float, float]] = {}
    while process.poll() is None:
        for pid in _workers(process.pid, processes):
            try:
                anon, file = rss(pid)
            except OSError:
                continue
            old = peaks.get(pid, (0.0, 0.0))
            peaks[pid] = (max(old[0], anon), max(old[1], file))
        time.sleep(0.05)
    output = process.stdout.read()
    if process.returncode != 0:
        raise RuntimeError(output[-2000:])
    return {"total_s": time.perf_counter() - start, "peaks": list(peaks.values())}


def startup(store: Path, out: Path) -> tuple[float, float]:
    """Seconds to open both splits of the store, and from there to the end of the first training step
    (building the trainer, ActNorm initialization, one step), in this process with glowtorch imported."""
    from glowtorch.data import load_dataset
    from glowtorch.model import GlowConfig
    from glowtorch.train import TrainConfig, Trainer

    start = time.perf_counter()
    train = load_dataset("prepared", store, train=True)
    test = load_dataset("prepared", store, train=False)
    opened = time.perf_counter() - start
    model = GlowConfig(image_shape=train.image_shape, levels=1, depth=1, hidden_channels=16)
    config = TrainConfig(batch_size=16, init_images=64, steps=1, precision="float32")
    trainer = Trainer(model, config, train, test, out)
    trainer.initialize()
    assert trainer.train_step(trainer.objective)
    return opened, time.perf_counter() - start


def _workers(root: int, processes: int) -> list[int]:
    """The training processes: ``root`` itself, or the children torchrun started."""
    if processes == 1:
        return [root]
    return [int(c) for c in subprocess.run(["pgrep", "-P", str(root)], capture_output=True, text=True).stdout.split()]


def gather_rates(store: Path, batches: int = 2000, batch: int = 64) -> tuple[float, float]:
    """Images/s gathered at random from the memory-mapped store (warm page cache) and from memory."""
    from glowtorch.data.store import open_store

    mapped = open_store(store).images
    in_memory = mapped.clone()
    generator = torch.Generator().manual_seed(0)
    index = [torch.randint(0, len(mapped), (batch,), generator=generator) for _ in range(batches)]
    for i in index:  # warm the page cache with these batches
        mapped[i].sum()
    rates = {}
    for name, images in (("mapped", mapped), ("memory", in_memory), ("mapped ", mapped), ("memory ", in_memory)):
        start = time.perf_counter()
        for i in index:
            images[i].float()  # the gather and the first use, as a training step makes them
        rates.setdefault(name.strip(), []).append(batches * batch / (time.perf_counter() - start))
    return max(rates["mapped"]), max(rates["memory"])


def prepare_rate(work: Path, count: int) -> tuple[float, float]:
    """Images/s of ``glowtorch prepare`` (2 workers) and of the in-memory folder loader on ``count`` PNGs."""
    from PIL import Image

    from glowtorch.data import load_dataset
    from glowtorch.data.store import prepare_store

    folder = work / "pngs"
    rng = np.random.default_rng(0)
    for i in range(count):
        path = folder / f"class{i % 10}" / f"{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)).save(path)
    start = time.perf_counter()
    prepare_store("folder", folder, work / "png-store", image_size=SIZE, workers=os.cpu_count())
    prepared = count / (time.perf_counter() - start)
    start = time.perf_counter()
    load_dataset("folder", folder, train=True, image_size=SIZE)
    load_dataset("folder", folder, train=False, image_size=SIZE)
    loader = count / (time.perf_counter() - start)
    return prepared, loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="a folder with room for the stores")
    parser.add_argument("--images", default="100000,2500000", help="store sizes (training images)")
    parser.add_argument("--pngs", type=int, default=8000)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--startup-of", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.startup_of:  # the child process that measures start-up
        from glowtorch import train  # noqa: F401  (the imports a training process makes)

        imports = time.perf_counter() - PROCESS_START
        opened, first_step = startup(args.startup_of, args.work / "run")
        print(json.dumps({"imports_s": imports, "open_s": opened, "startup_s": first_step}))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    print(f"machine: {os.cpu_count()} cores, {memory:.1f} GiB of memory")
    sizes = [int(v) for v in args.images.split(",")]
    for count in sizes:
        store = args.work / f"store-{count}"
        shutil.rmtree(store, ignore_errors=True)
        seconds = write_synthetic_store(store, count)
        size = sum(f.stat().st_size for f in store.rglob("*.npy")) / 2**30
        print(f"\n{count:,} images: {size:.1f} GiB written in {seconds:.0f} s")
        child = [sys.executable, __file__, "--work", str(args.work), "--startup-of", str(store)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        found = subprocess.run(child, capture_output=True, text=True, check=True, env=env)
        times = json.loads(found.stdout.strip().splitlines()[-1])
        print(f"  start-up in a new process: {times['imports_s']:.2f} s of Python imports, then "
              f"{times['startup_s']:.2f} s from opening the store to the end of the first training step, "
              f"of which opening the store {times['open_s'] * 1000:.1f} ms")  # fmt: skip
        for processes in (1, 2):
            result = run_training(store, args.work / "run", processes)
            peaks = ", ".join(f"RssAnon {a:.0f} MiB + RssFile {f:.0f} MiB" for a, f in result["peaks"])
            print(f"  {processes} process(es), 40 steps: {result['total_s']:.1f} s in all (Python and torch "
                  f"imports included); peak per process: {peaks}")  # fmt: skip
        if count == min(sizes):
            mapped, in_memory = gather_rates(store)
            print(f"  random batches of 64: {mapped:,.0f} images/s memory-mapped (page cache), "
                  f"{in_memory:,.0f} images/s in memory (x{in_memory / mapped:.2f})")  # fmt: skip
        if not args.keep:
            shutil.rmtree(store)
    if args.pngs:
        prepared, loader = prepare_rate(args.work, args.pngs)
        print(f"\nprepare from {args.pngs} PNG files (80x80 -> 64x64): {prepared:.0f} images/s with "
              f"{os.cpu_count()} workers; the in-memory folder loader {loader:.0f} images/s")  # fmt: skip
        if not args.keep:
            shutil.rmtree(args.work / "pngs")
            shutil.rmtree(args.work / "png-store")
    shutil.rmtree(args.work / "run", ignore_errors=True)


if __name__ == "__main__":
    main()
