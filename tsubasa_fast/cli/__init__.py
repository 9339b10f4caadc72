"""The ``tsubasa-fast`` command line: one argparse parser, command groups as sibling modules.

Each group module (``memory``, later ``synth``, ``train``, ...) exposes
``register(subparsers)``, which adds its commands and sets ``func`` on each leaf parser;
``func(args) -> int`` is the exit status. Errors from bad input (``ValueError``,
``FileNotFoundError``, a missing model folder or package) are printed as one clear line with
exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..errors import InputError, StageError
from ..memory.store_db import MemoryStoreError
from ..models import ModelNotFoundError

# Command-group modules, in the order they appear in --help. Add new groups here.
GROUPS = ("memory", "synth", "distill", "personalize", "eval_qa", "demo")


def positive_int(value: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def group(subparsers, name: str, help: str):
    """The sub-command set of top-level group ``name`` (created on first use), so several
    modules can add commands to one group (e.g. ``eval retrieval`` and a later ``eval qa``)."""
    groups = subparsers.__dict__.setdefault("_tsubasa_groups", {})
    if name not in groups:
        p = subparsers.add_parser(name, help=help, description=help)
        inner = p.add_subparsers(dest=f"{name}_command", metavar="COMMAND")
        inner.required = True
        groups[name] = inner
    return groups[name]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tsubasa-fast",
        description="TSUBASA personalisation engine: evolving user memory and context distillation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details (INFO level)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in GROUPS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def _flags(parser: argparse.ArgumentParser, argv: list[str]) -> dict[str, str]:
    """dest -> the option string of the command that ``argv`` runs (e.g. "user" -> "--user")."""
    out: dict[str, str] = {}
    words = set(argv)
    while parser is not None:
        nxt = None
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                nxt = next((p for name, p in action.choices.items() if name in words), None)
            elif action.option_strings:
                # the positive flag of a --x / --no-x pair; a lone "--no-llm" is its own flag
                flag = max((o for o in action.option_strings if not o.startswith("--no-")), key=len,
                           default=action.option_strings[0])
                out[action.dest] = flag
                # generated options ("train.lr"): a library error names the field alone ("lr")
                out.setdefault(action.dest.rpartition(".")[2], flag)
            else:
                out[action.dest] = action.metavar or action.dest.upper()
        parser = nxt
    return out


def error_message(e: BaseException, parser: argparse.ArgumentParser, argv: list[str]) -> str:
    """One line for a library error, its field shown as this command's flag where it has one."""
    if isinstance(e, InputError) and e.field:
        return f"{_flags(parser, argv).get(e.field, e.field)}: {e.message}"
    return str(e.args[0] if isinstance(e, KeyError) and e.args else e)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError, StageError, MemoryStoreError, ModelNotFoundError) as e:
        print(f"tsubasa-fast: error: {error_message(e, parser, argv)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
