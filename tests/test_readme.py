"""The README's examples run as written (docs that run): Python blocks execute, every shell
command it shows is a real Makefile target or a `tsubasa-fast` command line the CLI accepts."""

import pathlib
import re
import shlex

import pytest

from tsubasa_fast.cli import build_parser

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def _shell_commands(program: str) -> list[list[str]]:
    cmds = []
    for block in _blocks("sh"):
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith(program + " "):
                cmds.append(shlex.split(line.replace("$LOCOMO", "locomo.json"))[1:])
    return cmds


def test_readme_python_blocks_run():
    blocks = _blocks("python")
    assert blocks, "README.md has no python example"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})


def test_readme_make_commands_are_makefile_targets():
    targets = set(re.findall(r"^([A-Za-z][\w-]*):", (ROOT / "Makefile").read_text(), flags=re.M))
    shown = {argv[0] for argv in _shell_commands("make")}
    assert {"demo", "test"} <= shown, "README.md must show `make demo` and `make test`"
    assert shown <= targets, f"README shows make targets the Makefile lacks: {shown - targets}"


@pytest.mark.parametrize("argv", _shell_commands("tsubasa-fast"), ids=lambda a: " ".join(a[:2]))
def test_readme_command_lines_parse(argv):
    """Every documented flag exists and every documented value is accepted by the parser."""
    args = build_parser().parse_args(argv)
    assert callable(args.func)
