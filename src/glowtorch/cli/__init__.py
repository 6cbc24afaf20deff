"""The ``glowtorch`` command: parses arguments and calls the library. Errors are one line and exit 1;
an unexpected exception (a bug) is one line too, marked internal, exit 70 (``GLOWTORCH_DEBUG=1`` re-raises it).

Each command's flags sit beside the code that runs it, in the module of its theme; ``COMMANDS`` registers
them in the order ``glowtorch --help`` lists them. The model and training flags of ``glowtorch train`` are
derived from the fields of ``GlowConfig`` and ``TrainConfig``; the dataclasses validate the values.
"""

from __future__ import annotations

import os
import re
import sys

from ..allocator import keep_freed_memory
from ..checkpoint import CheckpointError
from ..data import DataError
from ..files import first_line
from ..model import NotInitializedError
from . import converting, datasets, evaluation, latent_space, models, training
from .common import Parser, Shared, UsageError, add_config_flags, field_docs

__all__ = ["COMMANDS", "INTERNAL_ERROR", "UsageError", "add_config_flags", "build_parser", "field_docs", "main"]

COMMANDS = (
    training.add_train,
    evaluation.add_evaluate,
    latent_space.add_sample,
    latent_space.add_encode,
    latent_space.add_decode,
    latent_space.add_temperatures,
    latent_space.add_interpolate,
    latent_space.add_directions,
    latent_space.add_manipulate,
    latent_space.add_lowres,
    evaluation.add_score,
    evaluation.add_ood,
    evaluation.add_superres,
    training.add_fit_class_prior,
    training.add_plot,
    datasets.add_prepare,
    converting.add_convert,
    models.add_demo,
    models.add_pretrained,
    training.add_presets,
)


def build_parser() -> Parser:
    parser = Parser(prog="glowtorch", description="Glow: generative flow with invertible 1x1 convolutions")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    shared = Shared.build()
    for add in COMMANDS:
        add(sub, shared)
    return parser


INTERNAL_ERROR = 70  # EX_SOFTWARE: what reached the last-resort handler in main

NUMBER_LIST = re.compile(r"^-?[\d.]+(e-?\d+)?(,\s*-?[\d.]+(e-?\d+)?)*$")


def _join_negative_lists(argv: list[str]) -> list[str]:
    """``--scales -1,0,1`` -> ``--scales=-1,0,1``: argparse would read "-1,0,1" as an option."""
    out: list[str] = []
    for token in argv:
        if (
            out
            and out[-1].startswith("--")
            and "=" not in out[-1]
            and token.startswith("-")
            and NUMBER_LIST.match(token)
        ):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def quiet_third_party_warnings() -> None:
    """Keeps PyTorch's own deprecation notices (FutureWarning from its modules, e.g. its compiler) out of the
    user's terminal; every other warning is shown as usual."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch(\.|$)")


def main(argv: list[str] | None = None) -> int:
    argv = _join_negative_lists(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    quiet_third_party_warnings()
    try:
        return args.func(args)
    except BrokenPipeError:  # the reader went away (``glowtorch presets | head``): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 141
    except (
        UsageError,
        DataError,
        CheckpointError,
        NotInitializedError,
        FloatingPointError,
        ValueError,
        OSError,
    ) as error:
        print(f"glowtorch: error: {first_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("glowtorch: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("glowtorch: error: out of memory: ask for fewer or smaller images, or a smaller model", file=sys.stderr)
        return 1
    except Exception as error:  # noqa: BLE001 - the last resort: a bug of glowtorch's, said in one line
        if os.environ.get("GLOWTORCH_DEBUG"):
            raise
        print(
            f"glowtorch: internal error: {type(error).__name__}: {first_line(error)[:300]} (a bug in glowtorch; "
            "GLOWTORCH_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
