"""Shared test inputs: student logits and teacher top-d entries drawn from a related teacher."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import torch

from tsubasa_fast.ops import reference


def make_case(n, vocab, d, *, seed=0, dtype=torch.float32, spread=3.0, shape=None):
    """Student logits (dtype) and a teacher's exact top-d (int64 indices, float32 logprobs)."""
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(n, vocab, generator=g, dtype=torch.float64) * spread
    student = (teacher + torch.randn(n, vocab, generator=g, dtype=torch.float64)).to(dtype)
    idx, lp = reference.select_topd(teacher, d)
    if shape is not None:
        student = student.reshape(*shape, vocab)
        idx = idx.reshape(*shape, d)
        lp = lp.reshape(*shape, d)
    return student, idx, lp.float()


def reference_loss(student, idx, lp, *, mask=None, reduction="mean", **kw):
    """The float64 reference loss, masked and reduced like the API."""
    rows = reference.topd_kl(student.double(), idx, lp.double(), **kw)
    if mask is not None:
        rows = rows * mask
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    count = rows.numel() if mask is None else int(mask.sum())
    return rows.sum() / max(count, 1)


def assert_grad_close(got, want, rel=1e-4):
    got = got.double()
    scale = want.abs().max().clamp_min(1e-30)
    err = (got - want).abs().max()
    assert err <= rel * scale, f"gradient error {err:.3e} > {rel} x max |grad| {scale:.3e}"


def assert_loss_close(got, want, rel=1e-5):
    got = got.double()
    err = (got - want).abs().max()
    assert err <= rel * want.abs().max().clamp_min(1e-12), f"loss {got} vs reference {want}"


def _locomo_dev():
    """The LoCoMo development file: ../shared beside the checkout (CI), else the workplace copy."""
    from pathlib import Path

    beside = Path(__file__).resolve().parents[2] / "shared" / "data" / "locomo" / "locomo_dev.json"
    return beside if beside.is_file() else Path("/work/shared/data/locomo/locomo_dev.json")


LOCOMO_DEV = _locomo_dev()


def raw_sql(store_dir: Path, sql: str) -> list:
    """Rows of ``sql`` on a store's file, read with plain sqlite3 (independent of the store code)."""
    db = sqlite3.connect(Path(store_dir) / "memory.sqlite")
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


ROOT = Path(__file__).resolve().parents[1]


def kill9_after_acks(script: str, args: list[str], n: int) -> list[list[str]]:
    """Runs ``script`` (python -c) and SIGKILLs it after its ``n``-th "ACK ..." line; returns the
    fields after "ACK" of every line read (what the child acknowledged before it died)."""
    proc = subprocess.Popen([sys.executable, "-c", script, *map(str, args)], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    acked = []
    for line in proc.stdout:
        acked.append(line.split()[1:])
        if len(acked) >= n:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed mid-way, not finished
    return acked
