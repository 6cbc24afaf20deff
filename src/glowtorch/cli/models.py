"""Commands about models as a whole: ``demo`` (the browser page) and ``pretrained`` (the shipped models)."""

from __future__ import annotations

import argparse
import os
import sys

from ..data import DATASETS
from ..pretrained import pretrained_card, pretrained_names
from .common import Shared, UsageError, int_up_to

__all__ = ["AUTH_VARIABLE", "add_demo", "add_pretrained", "user_and_password"]

AUTH_VARIABLE = "GLOWTORCH_DEMO_AUTH"


def user_and_password(text: str) -> tuple[str, str]:
    """``USER:PASSWORD`` (the password may hold colons) as ``(user, password)``, both non-empty."""
    user, colon, password = text.partition(":")
    if not colon or not user.strip() or not password:
        raise argparse.ArgumentTypeError("give the user name and password as USER:PASSWORD")
    return user, password


def add_demo(sub: argparse._SubParsersAction, shared: Shared) -> None:
    dm = sub.add_parser("demo", help="explore a model in the browser (a local web page)",
                        parents=[shared.device, shared.progress])  # fmt: skip
    dm.add_argument("checkpoint", nargs="?", help="model directory, run directory or pretrained:NAME "
                    "(default: pretrained:mnist)")  # fmt: skip
    dm.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    dm.add_argument("--port", type=int_up_to(65535), default=7860)
    dm.add_argument("--auth", type=user_and_password, metavar="USER:PASSWORD",
                    help="ask for this user name and password before showing the page (or set "
                    f"{AUTH_VARIABLE}=USER:PASSWORD, which keeps it out of the process list)")  # fmt: skip
    dm.add_argument("--dataset", choices=sorted(DATASETS), help="score its test split and compute directions "
                    "from its training split once (cached in the model folder's demo/), for models that lack "
                    "them")  # fmt: skip
    dm.add_argument("--data-dir", help="folder holding the dataset's files")
    dm.add_argument("--superres", default="auto", metavar="MODEL",
                    help="the Super-resolve tab's model (trained with --condition lowres:F); auto: "
                    "pretrained:mnist-sr4 beside models of 28x28 greyscale digits; none: no tab")  # fmt: skip
    dm.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise UsageError("the demo needs Gradio: pip install 'glowtorch[demo]'")
    from ..demo import Explorer, launch
    from ..demo.page import LOCAL_HOSTS

    auth = args.auth
    if auth is None and os.environ.get(AUTH_VARIABLE):
        try:
            auth = user_and_password(os.environ[AUTH_VARIABLE])
        except argparse.ArgumentTypeError:
            raise UsageError(f"{AUTH_VARIABLE} must be USER:PASSWORD") from None
    if args.host not in LOCAL_HOSTS:
        print(f"glowtorch: warning: --host {args.host} serves the page to other machines, " + (
              "and the password crosses the network unencrypted (plain http)" if auth else
              "with no login: add --auth USER:PASSWORD to ask for one"), file=sys.stderr, flush=True)  # fmt: skip
    checkpoint = args.checkpoint or "pretrained:mnist"
    superres = None if args.superres == "none" else args.superres
    explorer = Explorer.from_checkpoint(checkpoint, args.dataset, args.data_dir, args.device, not args.no_progress,
                                        superres)  # fmt: skip
    print(f"serving {checkpoint} at http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    launch(explorer, args.host, args.port, quiet=True, auth=auth)
    return 0


def add_pretrained(sub: argparse._SubParsersAction, shared: Shared) -> None:
    sub.add_parser("pretrained", help="list the shipped pretrained models").set_defaults(func=cmd_pretrained)


def cmd_pretrained(args) -> int:
    for name in pretrained_names():
        card = pretrained_card(name)
        print(
            f"pretrained:{name:18s} {card['test_bpd']:.4f} bits/dim on the {card['dataset']} test set, "
            f"{card['parameters'] / 1e6:.2f}M parameters, {card['cpu_hours']:.1f} CPU-hours; trained with: "
            f"{card['command']}"
        )
    return 0
