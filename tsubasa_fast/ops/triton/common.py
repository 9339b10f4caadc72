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
def masked_lse_step(x, x_sum, m, s, check):
    """As lse_step, but -inf logits are allowed (they add nothing) and the sum runs over
    x_sum (x with some entries set to -inf) while the max runs over x. check turns NaN on a
    NaN or +inf logit only. A row that is -inf so far keeps m = -inf and s = 0 (no NaN)."""
    check += tl.sum(tl.where(x == -float("inf"), 0.0, x) * 0.0, 0)
    new_m = tl.maximum(m, tl.max(x, 0))
    safe = tl.where(new_m == -float("inf"), 0.0, new_m)
    s = s * tl.exp(m - safe) + tl.sum(tl.exp(x_sum - safe), 0)
    return new_m, s, check
