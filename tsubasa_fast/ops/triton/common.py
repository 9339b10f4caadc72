"""Shared pieces of the Triton kernels: launch configuration and the online log-sum-exp.

Under TRITON_INTERPRET=1 (CPU, tests) the cost is per program and per Python-level op, so a
row is swept in one wide block; on a GPU a row is swept in 4,096-wide blocks.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

# Whether the kernels were decorated under the interpreter: TRITON_INTERPRET must be set
# before the @triton.jit decorators run, so later changes to the variable have no effect.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
_INTERPRETER_MAX_BLOCK = 1 << 18


def block_v(vocab: int) -> int:
    if INTERPRETED:
        return min(triton.next_power_of_2(vocab), _INTERPRETER_MAX_BLOCK)
    return min(triton.next_power_of_2(vocab), 4096)


def num_warps(block: int) -> int:
    return 1 if INTERPRETED else (8 if block >= 2048 else 4)


@triton.jit
def lse_step(x, valid, m, s, check):
    """Folds one block of tempered logits into the running (max, sum of exp, finiteness check).
    check accumulates sum(x * 0): it turns NaN once any NaN or inf logit has been seen."""
    check += tl.sum(tl.where(valid, x, 0.0) * 0.0, 0)
    new_m = tl.maximum(m, tl.max(x, 0))
    s = s * tl.exp(m - new_m) + tl.sum(tl.exp(x - new_m), 0)
    return new_m, s, check


@triton.jit
def online_lse(row_ptr, V, inv_temp, BLOCK_V: tl.constexpr):
    """log-sum-exp of row / T in one sweep; NaN when the row holds a NaN or inf logit."""
    offs = tl.arange(0, BLOCK_V)
    m = -float("inf")
    s = 0.0
    check = 0.0
    for start in range(0, V, BLOCK_V):
        cols = start + offs
        valid = cols < V
        x = tl.load(row_ptr + cols, mask=valid, other=-float("inf")).to(tl.float32) * inv_temp
        m, s, check = lse_step(x, valid, m, s, check)
    return m + tl.log(s) + check
