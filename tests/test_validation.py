"""Bad input raises ValueError naming the argument; a wrong silent loss is the worst outcome."""

import pytest
import torch

import tsubasa_fast as tf

from .helpers import make_case


@pytest.fixture
def case():
    return make_case(6, 100, 5, seed=0)


def _raises(match, fn, *a, **kw):
    with pytest.raises(ValueError, match=match):
        fn(*a, **kw)


@pytest.mark.parametrize("bad", [100, 12345, -1])
def test_teacher_index_out_of_range(backend, case, bad):
    x, idx, lp = case
    idx[2, 3] = bad
    _raises("teacher_indices", tf.topd_kl_loss, x, idx, lp, backend=backend)
    h = torch.randn(6, 8)
    w = torch.randn(100, 8)
    _raises("teacher_indices", tf.fused_linear_topd_kl_loss, h, w, idx, lp, backend=backend)


def test_teacher_beyond_student_vocab_is_ignored_only_when_masked(backend, case):
    x, idx, lp = case
    idx[2, 0] = 100
    mask = torch.ones(6, dtype=torch.bool)
    mask[2] = False
    assert torch.isfinite(tf.topd_kl_loss(x, idx, lp, mask=mask, backend=backend))


@pytest.mark.parametrize("value,what", [(float("nan"), "NaN"), (float("inf"), r"\+inf")])
def test_nonfinite_student_logits(backend, case, value, what):
    x, idx, lp = case
    x[4, 17] = value
    _raises(f"student_logits contains {what} \\(at flattened position 4\\)", tf.topd_kl_loss,
            x, idx, lp, backend=backend)
    # -inf is allowed off the teacher's entries (test_loss.py checks the values) ...
    x[4, 17] = 0.0
    x[4, next(c for c in range(100) if c not in idx[4].tolist())] = float("-inf")
    assert torch.isfinite(tf.topd_kl_loss(x, idx, lp, backend=backend))
    # ... and an error at one of them
    x[4, idx[4, 0]] = float("-inf")
    _raises("student_logits is -inf at teacher token", tf.topd_kl_loss, x, idx, lp, backend=backend)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_logits_in_select(backend, value):
    x = torch.randn(3, 50)
    x[1, 2] = value
    _raises("logits", tf.select_topd, x, 3, backend=backend)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_teacher_logprobs(backend, case, value):
    x, idx, lp = case
    lp[1, 2] = value
    _raises("teacher_logprobs", tf.topd_kl_loss, x, idx, lp, backend=backend)


def test_logits_passed_as_logprobs(case):
    x, idx, lp = case
    _raises("log-probabilities", tf.topd_kl_loss, x, idx, lp + 3.0)


def test_shape_mismatches(case):
    x, idx, lp = case
    _raises("teacher_indices", tf.topd_kl_loss, x, idx[:5], lp[:5])
    _raises("teacher_logprobs", tf.topd_kl_loss, x, idx, lp[:, :4])
    _raises("mask", tf.topd_kl_loss, x, idx, lp, mask=torch.ones(5, dtype=torch.bool))
    _raises("mask", tf.topd_kl_loss, x, idx, lp, mask=torch.ones(6))
    _raises("labels", tf.topd_kl_loss, x, idx, lp, labels=torch.zeros(5, dtype=torch.long), ce_weight=1.0)
    _raises("student_logits", tf.topd_kl_loss, x[0], idx[0], lp[0])
    _raises("weight", tf.fused_linear_topd_kl_loss, torch.randn(6, 8), torch.randn(100, 9), idx, lp)
    _raises("bias", tf.fused_linear_topd_kl_loss, torch.randn(6, 8), torch.randn(100, 8), idx, lp,
            bias=torch.randn(99))
    _raises("dtypes differ", tf.fused_linear_topd_kl_loss, torch.randn(6, 8),
            torch.randn(100, 8, dtype=torch.float64), idx, lp)


def test_d_larger_than_vocab():
    _raises("d=11", tf.select_topd, torch.randn(2, 10), 11)
    _raises("d must be >= 1", tf.select_topd, torch.randn(2, 10), 0)
    idx = torch.zeros(2, 11, dtype=torch.long)
    _raises("d=11", tf.topd_kl_loss, torch.randn(2, 10), idx, torch.full((2, 11), -3.0))


def test_dtypes_and_options(case):
    x, idx, lp = case
    _raises("teacher_indices", tf.topd_kl_loss, x, idx.float(), lp)
    _raises("teacher_logprobs", tf.topd_kl_loss, x, idx, lp.long())
    _raises("student_logits", tf.topd_kl_loss, x.long(), idx, lp)
    _raises("tail", tf.topd_kl_loss, x, idx, lp, tail="full")
    _raises("reduction", tf.topd_kl_loss, x, idx, lp, reduction="avg")
    _raises("temperature", tf.topd_kl_loss, x, idx, lp, temperature=0.0)
    _raises("temperature", tf.select_topd, x, 2, temperature=-1)
    _raises("ce_weight", tf.topd_kl_loss, x, idx, lp, ce_weight=-0.5, labels=idx[:, 0])
    _raises("labels is required", tf.topd_kl_loss, x, idx, lp, ce_weight=0.5)
    _raises("chunk_size", tf.fused_linear_topd_kl_loss, torch.randn(6, 8), torch.randn(100, 8),
            idx, lp, chunk_size=0)


def test_label_out_of_range(case):
    x, idx, lp = case
    labels = idx[:, 0].clone()
    labels[3] = 100
    _raises("labels holds 100", tf.topd_kl_loss, x, idx, lp, labels=labels, ce_weight=1.0)
    labels[3] = -7
    _raises("labels holds -7", tf.topd_kl_loss, x, idx, lp, labels=labels, ce_weight=1.0)
