"""``glowtorch prepare``: a dataset decoded once into a memory-mapped store."""

from __future__ import annotations

import argparse

from ..data import DATASETS
from .common import Shared, int_up_to

__all__ = ["add_prepare"]


def add_prepare(sub: argparse._SubParsersAction, shared: Shared) -> None:
    pr = sub.add_parser("prepare", help="decode a dataset once into a memory-mapped store (--dataset prepared)")
    pr.add_argument("--dataset", required=True, choices=[c for c in sorted(DATASETS) if c != "prepared"])
    pr.add_argument("--data-dir", help="folder holding the dataset's files")
    pr.add_argument("--image-size", type=int_up_to(4096), help="center-crop and resize to this square size")
    pr.add_argument("--channels", type=int, choices=[1, 3], default=3, help="channels for image folders")
    pr.add_argument("--out", "-o", required=True, help="the store's folder")
    pr.add_argument("--workers", type=int_up_to(1024), help="decoding processes (default: all cores)")
    pr.set_defaults(func=cmd_prepare)


def cmd_prepare(args) -> int:
    import time

    from ..data import prepare_store

    start = time.monotonic()
    manifest = prepare_store(args.dataset, args.data_dir, args.out, args.image_size, args.channels, args.workers)
    train, test = manifest["splits"]["train"], manifest["splits"]["test"]
    seconds = time.monotonic() - start
    skipped = train["skipped"] + test["skipped"]
    print(f"{args.out}: {train['count']} train / {test['count']} test images of shape {tuple(train['shape'][1:])}"
          + (f", {skipped} unreadable file(s) skipped" if skipped else "")
          + f"; {seconds:.1f} s ({(train['count'] + test['count']) / max(seconds, 1e-9):.0f} images/s). "
          f"Train on it with --dataset prepared --data-dir {args.out}")  # fmt: skip
    return 0
