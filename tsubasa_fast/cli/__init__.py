"""The ``tsubasa-fast`` command line: one argparse parser, command groups as sibling modules.

Each group module (``memory``, later ``synth``, ``train``, ...) exposes
``register(subparsers)``, which adds its commands and sets ``func`` on each leaf parser;
``func(args) -> int`` is the exit status. Errors from bad input (``ValueError``,
``FileNotFoundError``) are printed as one clear line with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Command-group modules, in the order they appear in --help. Add new groups here.
GROUPS = ("memory", "synth", "distill", "personalize", "eval_qa")


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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"tsubasa-fast: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
