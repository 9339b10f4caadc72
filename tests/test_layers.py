"""The package's layers hold: the import-linter contracts in pyproject.toml, and a memory
import that leaves torch and the loss kernels unloaded."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_are_kept():
    out = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "2 kept, 0 broken" in out.stdout


def test_importing_the_memory_loads_neither_torch_nor_the_loss():
    code = ("import sys, tsubasa_fast.memory, tsubasa_fast.memory.store, tsubasa_fast.memory.retrieval; "
            "print(sorted(m for m in ('torch', 'tsubasa_fast.loss', 'tsubasa_fast.ops') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
