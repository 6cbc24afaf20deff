"""Mutation testing: inject one small bug at a time into a module's functions and run its tests.

    python scripts/mutation.py glowtorch.context tests/test_conditional.py
    python scripts/mutation.py glowtorch.ood tests/test_ood.py --only ood_report,_scores
    python scripts/mutation.py --all                       # every module of MODULES, with its tests

Each mutant changes one thing in one function body: an arithmetic or comparison operator, ``and``/``or``,
a ``not`` or unary minus dropped, an integer or float constant moved by one, ``True``/``False`` swapped,
a reduction or rounding method swapped (``mean``/``sum``, ``min``/``max``, ``floor``/``ceil``, ...), or an
interpolation mode swapped (``bilinear``/``nearest``, ...). Message text (strings, f-strings, the
arguments of ``raise``) and docstrings are never mutated. The mutant's code replaces the function's
``__code__`` in the running process, so every caller sees it however it imported the function; the tests
run in the same process (``pytest.main``), which keeps a run over hundreds of mutants to minutes.

A mutant is killed when a test fails (or it runs past ``--timeout`` seconds), survives when all pass.
Survivors are printed with their line and change; those that change no result are listed as equivalent in
docs/design.md (Testing). Exit status: the number of survivors not in ``--allow`` (capped at 100).
"""

from __future__ import annotations

import argparse
import ast
import copy
import importlib
import inspect
import signal
import sys
import textwrap
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# module -> the tests that check it, fast and targeted first (a file or a pytest node id)
MODULES: dict[str, list[str]] = {
    "glowtorch.context": ["tests/test_values.py", "tests/test_conditional.py"],
    "glowtorch.superres": ["tests/test_values.py", "tests/test_conditional.py"],
    "glowtorch.ood": ["tests/test_values.py", "tests/test_ood.py"],
    "glowtorch.convert": ["tests/test_values.py", "tests/test_convert.py"],
    "glowtorch.class_prior": [
        "tests/test_units.py",
        "tests/test_model.py::test_fit_class_prior_is_each_class_top_latent_mean_and_std_and_raises_the_likelihood",
        "tests/test_conditional_cli.py",
    ],
    "glowtorch.reference": ["tests/test_units.py", "tests/test_demo.py"],
    "glowtorch.files": ["tests/test_units.py", "tests/test_bad_input.py", "tests/test_store.py"],
    "glowtorch.precision": ["tests/test_units.py", "tests/test_precision.py"],
    "glowtorch.train.schedule": ["tests/test_units.py", "tests/test_reliability.py"],
    "glowtorch.train.diagnostics": ["tests/test_units.py", "tests/test_distributed.py"],
    "glowtorch.demo.explorer": ["tests/test_demo.py"],
    "glowtorch.splines": ["tests/test_splines.py", "tests/test_layers.py"],
    "glowtorch.dequantization": ["tests/test_dequantization.py"],
    "glowtorch.latent_files": ["tests/test_units_data.py", "tests/test_latent.py", "tests/test_demo.py"],
    "glowtorch.train.batches": ["tests/test_units_data.py", "tests/test_data.py", "tests/test_conditional.py"],
    "glowtorch.train.run_dir": [
        "tests/test_units_data.py",
        "tests/test_hostile.py::test_resume_names_damaged_checkpoints_and_never_prunes_the_good_one",
        "tests/test_hostile.py::test_a_run_stopped_before_its_first_checkpoint_can_be_resumed",
        "tests/test_checkpoint.py",
    ],
    "glowtorch.data.store": ["tests/test_units_data.py", "tests/test_store.py"],
    "glowtorch.data.sources": ["tests/test_units_data.py", "tests/test_data.py", "tests/test_hostile.py"],
    "glowtorch.data.image_files": [
        "tests/test_units_data.py",
        "tests/test_units.py",
        "tests/test_data.py",
        "tests/test_hostile.py::test_a_sixteen_bit_png_is_scaled_not_clipped",
    ],
}

METHOD_SWAPS = {
    "mean": "sum", "sum": "mean", "min": "max", "max": "min", "amin": "amax", "amax": "amin",
    "floor": "ceil", "ceil": "floor", "argmin": "argmax", "argmax": "argmin", "minimum": "maximum",
    "maximum": "minimum", "clamp_min": "clamp_max", "clamp_max": "clamp_min", "std": "var", "var": "std",
    "log2": "log", "log": "log2", "exp": "expm1", "sqrt": "abs", "round": "floor", "flip": "fliplr",
    "fliplr": "flipud", "flipud": "fliplr", "any": "all", "all": "any", "cumsum": "cumprod",
}  # fmt: skip
STRING_SWAPS = {
    "bilinear": "nearest", "nearest": "bilinear", "bicubic": "bilinear", "area": "nearest",
    "linear": "slerp", "slerp": "linear", "floor": "trunc", "trunc": "floor",
}  # fmt: skip
BINOPS = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
    ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult, ast.MatMult: ast.Mult, ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd,
    ast.LShift: ast.RShift, ast.RShift: ast.LShift,
}  # fmt: skip
COMPARES = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
    ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
}  # fmt: skip


@dataclass
class Mutant:
    function: str  # qualified name in the module
    line: int  # in the module's file
    change: str
    code: types.CodeType


def _protected(tree: ast.AST) -> set[int]:
    """ids of nodes never mutated: docstrings, f-strings, raise statements and their contents, annotations."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Raise, ast.JoinedStr, ast.Assert)):
            skip.update(id(n) for n in ast.walk(node))
        if isinstance(node, ast.AnnAssign):  # annotations are not evaluated (from __future__ import annotations)
            skip.update(id(n) for n in ast.walk(node.annotation))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):  # a nested function's annotations too
            for annotation in [node.returns, *(a.annotation for a in ast.walk(node.args) if isinstance(a, ast.arg))]:
                if annotation is not None:
                    skip.update(id(n) for n in ast.walk(annotation))
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                skip.update(id(n) for n in ast.walk(body[0]))
    return skip


def _changes(node: ast.AST) -> Iterator[tuple[str, Callable[[ast.AST], None]]]:
    """(description, apply) for each mutation of ``node`` itself; ``apply`` edits a copy of it in place."""
    if isinstance(node, ast.BinOp) and type(node.op) in BINOPS:
        new = BINOPS[type(node.op)]
        yield f"{type(node.op).__name__} -> {new.__name__}", lambda n: setattr(n, "op", new())
    elif isinstance(node, ast.AugAssign) and type(node.op) in BINOPS:
        new = BINOPS[type(node.op)]
        yield f"{type(node.op).__name__}= -> {new.__name__}=", lambda n: setattr(n, "op", new())
    elif isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in COMPARES:
                new = COMPARES[type(op)]

                def apply(n, i=i, new=new):
                    n.ops[i] = new()

                yield f"{type(op).__name__} -> {new.__name__}", apply
    elif isinstance(node, ast.BoolOp):
        new = ast.Or if isinstance(node.op, ast.And) else ast.And
        yield f"{type(node.op).__name__} -> {new.__name__}", lambda n: setattr(n, "op", new())
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
        yield f"drop {type(node.op).__name__}", lambda n: setattr(n, "op", ast.UAdd())
    elif isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool):
            yield f"{value} -> {not value}", lambda n: setattr(n, "value", not value)
        elif isinstance(value, int):
            yield f"{value} -> {value + 1}", lambda n: setattr(n, "value", value + 1)
        elif isinstance(value, float):
            new = value * 2 if value else 1.0
            yield f"{value!r} -> {new!r}", lambda n: setattr(n, "value", new)
        elif isinstance(value, str) and value in STRING_SWAPS:
            yield f"{value!r} -> {STRING_SWAPS[value]!r}", lambda n: setattr(n, "value", STRING_SWAPS[value])
    elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load) and node.attr in METHOD_SWAPS:
        new = METHOD_SWAPS[node.attr]
        yield f".{node.attr} -> .{new}", lambda n: setattr(n, "attr", new)


def _functions(module: types.ModuleType) -> Iterator[tuple[str, types.FunctionType]]:
    """The module's own functions and methods (those defined in its file), by qualified name."""
    seen: set[int] = set()

    def visit(owner, prefix: str):
        for name, value in list(vars(owner).items()):  # tests may add attributes while mutants run
            target = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
            if isinstance(value, property):
                target = value.fget
            if isinstance(target, types.FunctionType):
                target = inspect.unwrap(target)  # a decorated function: its own code, inside the wrapper
            if isinstance(target, types.FunctionType) and target.__module__ == module.__name__:
                if id(target) not in seen:
                    seen.add(id(target))
                    yield f"{prefix}{target.__name__}", target
            elif isinstance(value, type) and value.__module__ == module.__name__ and id(value) not in seen:
                seen.add(id(value))
                yield from visit(value, f"{prefix}{name}.")

    yield from visit(module, "")


def mutants(module: types.ModuleType, only: set[str] | None = None) -> Iterator[tuple[types.FunctionType, Mutant]]:
    """Every mutant of every function of ``module`` (or of the functions named in ``only``)."""
    for qualname, function in _functions(module):
        if only and qualname.split(".")[-1] not in only and qualname not in only:
            continue
        try:
            lines, start = inspect.getsourcelines(function)
        except (OSError, TypeError):
            continue
        source = textwrap.dedent("".join(lines))
        tree = ast.parse(source)
        skip = _protected(tree)
        definition = tree.body[0]
        # only the body: never the decorators, the signature's defaults or annotations
        body_ids = {id(n) for statement in definition.body for n in ast.walk(statement)}
        for index, node in enumerate(ast.walk(definition)):
            if id(node) not in body_ids or id(node) in skip:
                continue
            for change, apply in _changes(node):
                mutated = copy.deepcopy(tree)
                apply(list(ast.walk(mutated.body[0]))[index])
                mutated.body[0].decorator_list = []
                ast.fix_missing_locations(mutated)
                code = _compile(mutated, function, start)
                if code is not None:
                    yield function, Mutant(qualname, start + getattr(node, "lineno", 1) - 1, change, code)


def _compile(tree: ast.Module, function: types.FunctionType, start: int) -> types.CodeType | None:
    """The code object of the mutated function, compiled with the original's free variables as closures."""
    ast.increment_lineno(tree, start - 1)
    freevars = function.__code__.co_freevars
    if freevars:  # wrap in a function that defines the free variables, so they compile as closure cells
        wrapper = ast.parse("def __wrapper__():\n    pass")
        wrapper.body[0].body = [
            *(ast.parse(f"{name} = None").body[0] for name in freevars),
            tree.body[0],
            ast.parse(f"return {tree.body[0].name}").body[0],
        ]
        tree = ast.fix_missing_locations(wrapper)
    try:
        module_code = compile(tree, function.__code__.co_filename, "exec")
    except (SyntaxError, ValueError):
        return None
    codes = [c for c in module_code.co_consts if isinstance(c, types.CodeType)]
    if freevars:
        codes = [c for c in codes[0].co_consts if isinstance(c, types.CodeType)]
    code = next((c for c in codes if c.co_name == function.__name__), None)
    if code is None or code.co_freevars != freevars:
        return None
    return code


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout


def run_tests(tests: list[str], timeout: float) -> bool:
    """True when every test passes (the mutant survives). The files run one at a time, in the order given
    (fast, targeted ones first), stopping at the first failure."""
    import pytest

    signal.signal(signal.SIGALRM, _alarm)
    for test in tests:
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            code = pytest.main(["-x", "-q", "-p", "no:cacheprovider", "--no-header", test])
        except _Timeout:
            return False
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if code != 0:
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("module", nargs="?", help="e.g. glowtorch.context")
    parser.add_argument("tests", nargs="*", help="test files (default: the module's in MODULES)")
    parser.add_argument("--all", action="store_true", help="every module of MODULES")
    parser.add_argument("--only", default="", help="comma-separated function names")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a mutant's test run may take")
    parser.add_argument("--allow", default="", help="file of survivors known to be equivalent (one 'module:line "
                        "change' per line)")  # fmt: skip
    args = parser.parse_args(argv)
    import contextlib
    import io

    sys.path.insert(0, str(ROOT / "tests"))
    allowed = set()
    if args.allow:
        allowed = {line.strip() for line in Path(args.allow).read_text().splitlines() if line.strip()}
    targets = list(MODULES.items()) if args.all else [(args.module, args.tests or MODULES.get(args.module, []))]
    survivors: list[str] = []
    for name, tests in targets:
        module = importlib.import_module(name)
        tests = [str(ROOT / t) for t in tests]
        with contextlib.redirect_stdout(io.StringIO()):
            assert run_tests(tests, args.timeout * 3), f"{name}: the tests fail without a mutant"
        killed = total = 0
        began = time.monotonic()
        for function, mutant in mutants(module, set(filter(None, args.only.split(","))) or None):
            original = function.__code__
            function.__code__ = mutant.code
            try:
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    survived = run_tests(tests, args.timeout)
            finally:
                function.__code__ = original
            total += 1
            killed += not survived
            if survived:
                key = f"{name}:{mutant.line} {mutant.change}"
                mark = "" if key in allowed else "  SURVIVED"
                print(f"{key} in {mutant.function}{mark}", flush=True)
                if key not in allowed:
                    survivors.append(key)
        print(f"{name}: {killed} of {total} mutants killed ({time.monotonic() - began:.0f} s)", flush=True)
    return min(len(survivors), 100)


if __name__ == "__main__":
    sys.exit(main())
