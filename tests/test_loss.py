"""The public loss API on every backend available here, against the float64 reference."""

import pytest
import torch
import torch.nn.functional as F

import tsubasa_fast as tf
from tsubasa_fast.ops import reference

from .helpers import assert_grad_close, assert_loss_close, make_case, reference_loss

QWEN_V = 151_936


def _run(student, idx, lp, backend, **kw):
    x = student.detach().clone().requires_grad_()
    loss = tf.topd_kl_loss(x, idx, lp, backend=backend, **kw)
    loss.sum().backward() if loss.dim() else loss.backward()
    return loss.detach(), x.grad


def _ref(student, idx, lp, **kw):
    x = student.detach().double().requires_grad_()
    loss = reference_loss(x, idx, lp, **kw)
    loss.sum().backward()
    return loss.detach(), x.grad


# ----------------------------------------------------------------------------- select_topd


@pytest.mark.parametrize("d", [1, 2, 5, 64])
def test_select_topd(backend, d):
    x, _, _ = make_case(37, 1000, 1, seed=d)
    x[3, 100:110] = 50.0  # a run of ties at the top: lower ids first
    got = tf.select_topd(x, d, temperature=1.7, backend=backend)
    want_idx, want_lp = reference.select_topd(x.double(), d, 1.7)
    assert got.indices.dtype == torch.int32 and got.logprobs.dtype == torch.float32
    assert torch.equal(got.indices.long(), want_idx)
    torch.testing.assert_close(got.logprobs.double(), want_lp, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("d", [5, 64])
def test_select_topd_qwen_vocab(backend, d):
    x, _, _ = make_case(3, QWEN_V, 1, seed=7)
    got = tf.select_topd(x.reshape(1, 3, QWEN_V), d, backend=backend)
    want_idx, want_lp = reference.select_topd(x.double(), d)
    assert got.indices.shape == (1, 3, d)
    assert torch.equal(got.indices.reshape(3, d).long(), want_idx)
    torch.testing.assert_close(got.logprobs.reshape(3, d).double(), want_lp, rtol=1e-5, atol=1e-5)


def test_select_topd_bf16(backend):
    x, _, _ = make_case(9, 1000, 1, seed=3, dtype=torch.bfloat16)
    got = tf.select_topd(x, 5, backend=backend)
    want_idx, want_lp = reference.select_topd(x.double(), 5)
    assert torch.equal(got.indices.long(), want_idx)
    torch.testing.assert_close(got.logprobs.double(), want_lp, rtol=1e-5, atol=1e-5)


def test_fused_linear_select_topd(backend):
    g = torch.Generator().manual_seed(11)
    h = torch.randn(2, 19, 32, generator=g)
    w = torch.randn(1000, 32, generator=g) / 4
    b = torch.randn(1000, generator=g)
    got = tf.fused_linear_select_topd(h, w, 5, bias=b, temperature=0.8, backend=backend, chunk_size=7)
    want_idx, want_lp = reference.select_topd((h.double() @ w.double().T + b.double()), 5, 0.8)
    assert torch.equal(got.indices.long(), want_idx)
    torch.testing.assert_close(got.logprobs.double(), want_lp, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- topd_kl_loss


@pytest.mark.parametrize("tail", reference.TAIL_MODES)
@pytest.mark.parametrize("d", [1, 2, 5, 64])
def test_topd_kl_matches_reference(backend, tail, d):
    x, idx, lp = make_case(37, 1000, d, seed=d)
    mask = torch.ones(37, dtype=torch.bool)
    mask[[0, 5, 36]] = False
    got, g = _run(x, idx, lp, backend, tail=tail, temperature=1.7, mask=mask)
    want, wg = _ref(x, idx, lp, tail=tail, temperature=1.7, mask=mask)
    assert_loss_close(got, want)
    assert_grad_close(g, wg)
    assert (g[~mask] == 0).all()


@pytest.mark.parametrize("tail", reference.TAIL_MODES)
def test_topd_kl_qwen_vocab(backend, tail):
    x, idx, lp = make_case(3, QWEN_V, 5, seed=21)
    got, g = _run(x, idx, lp, backend, tail=tail, temperature=0.9)
    want, wg = _ref(x, idx, lp, tail=tail, temperature=0.9)
    assert_loss_close(got, want)
    assert_grad_close(g, wg)


def test_topd_kl_d64_qwen_vocab(backend):
    x, idx, lp = make_case(2, QWEN_V, 64, seed=22)
    got, g = _run(x, idx, lp, backend)
    want, wg = _ref(x, idx, lp)
    assert_loss_close(got, want)
    assert_grad_close(g, wg)


@pytest.mark.parametrize("tail", reference.TAIL_MODES)
def test_duplicate_teacher_indices(backend, tail):
    x, idx, lp = make_case(11, 1000, 5, seed=4)
    idx[:, 1] = idx[:, 0]
    idx[2, :] = idx[2, 3]
    got, g = _run(x, idx, lp, backend, tail=tail)
    want, wg = _ref(x, idx, lp, tail=tail)
    assert_loss_close(got, want)
    assert_grad_close(g, wg)


@pytest.mark.parametrize("tail", reference.TAIL_MODES)
def test_ce_term_with_ignored_labels(backend, tail):
    x, idx, lp = make_case(13, 1000, 5, seed=5)
    labels = torch.randint(0, 1000, (13,), generator=torch.Generator().manual_seed(0))
    labels[2] = -100  # ignored: no CE at this position
    labels[3] = idx[3, 0]  # label inside the teacher set
    labels[4] = idx[4, 4]
    got, g = _run(x, idx, lp, backend, tail=tail, labels=labels, ce_weight=0.6, temperature=1.3)
    want, wg = _ref(x, idx, lp, tail=tail, labels=labels, ce_weight=0.6, temperature=1.3)
    assert_loss_close(got, want)
    assert_grad_close(g, wg)
    # regression: the CE term must reach the backward pass
    _, g0 = _run(x, idx, lp, backend, tail=tail, temperature=1.3)
    assert (g - g0).abs().max() > 1e-3


def test_d1_renorm_equals_cross_entropy(backend):
    x, idx, lp = make_case(29, 1000, 1, seed=6)
    got, g = _run(x, idx, lp, backend)
    xr = x.detach().clone().requires_grad_()
    want = F.cross_entropy(xr, idx[:, 0])
    want.backward()
    torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g, xr.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions_and_3d_shapes(backend, reduction):
    x, idx, lp = make_case(2 * 7, 1000, 5, seed=8, shape=(2, 7))
    mask = torch.rand(2, 7, generator=torch.Generator().manual_seed(1)) > 0.3
    got, g = _run(x, idx, lp, backend, mask=mask, reduction=reduction)
    want, wg = _ref(x, idx, lp, mask=mask, reduction=reduction)
    assert got.shape == want.shape
    assert_loss_close(got, want)
    assert_grad_close(g, wg)


def test_nonuniform_grad_output_for_reduction_none(backend):
    x, idx, lp = make_case(9, 1000, 5, seed=9)
    weights = torch.linspace(0.1, 2.0, 9)
    xs = x.clone().requires_grad_()
    (tf.topd_kl_loss(xs, idx, lp, reduction="none", backend=backend) * weights).sum().backward()
    xr = x.double().requires_grad_()
    (reference_loss(xr, idx, lp, reduction="none") * weights.double()).sum().backward()
    assert_grad_close(xs.grad, xr.grad)


def test_all_positions_masked_gives_zero(backend):
    x, idx, lp = make_case(6, 1000, 5, seed=10)
    idx[0, 0] = 5000  # out of range, but masked: must be ignored, not read
    mask = torch.zeros(6, dtype=torch.bool)
    got, g = _run(x, idx, lp, backend, mask=mask)
    assert got.item() == 0.0 and torch.isfinite(got)
    assert (g == 0).all()


def test_bf16_inputs(backend):
    x, idx, lp = make_case(21, 1000, 5, seed=12, dtype=torch.bfloat16)
    got, g = _run(x, idx, lp, backend, temperature=1.5)
    want, wg = _ref(x, idx, lp, temperature=1.5)
    assert g.dtype == torch.bfloat16
    assert_loss_close(got, want)
    assert_grad_close(g, wg, rel=1e-2)  # the gradient is stored in bf16 (8 mantissa bits)


def test_modules(backend):
    x, idx, lp = make_case(8, 1000, 5, seed=13)
    mod = tf.TopDKLLoss(tail="bucket", temperature=2.0, backend=backend)
    torch.testing.assert_close(
        mod(x, idx, lp), tf.topd_kl_loss(x, idx, lp, tail="bucket", temperature=2.0, backend=backend)
    )
    assert "bucket" in repr(mod)


# ------------------------------------------------------------------------ fused linear loss


def _fused_case(seed, n=23, hdim=32, vocab=1000, d=5, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hdim, generator=g, dtype=torch.float64)
    w = torch.randn(vocab, hdim, generator=g, dtype=torch.float64) / 3
    b = torch.randn(vocab, generator=g, dtype=torch.float64) / 3
    teacher = (h @ w.T + b) * 1.5 + torch.randn(n, vocab, generator=g, dtype=torch.float64)
    idx, lp = reference.select_topd(teacher, d)
    return h.to(dtype), w.to(dtype), b.to(dtype), idx, lp.float()


@pytest.mark.parametrize("tail", reference.TAIL_MODES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_fused_linear_matches_reference(backend, tail, reduction):
    h, w, b, idx, lp = _fused_case(14)
    mask = torch.ones(23, dtype=torch.bool)
    mask[[1, 2, 20]] = False
    labels = torch.randint(0, 1000, (23,), generator=torch.Generator().manual_seed(3))
    labels[4] = -100
    kw = dict(tail=tail, temperature=1.2, mask=mask, labels=labels, ce_weight=0.3, reduction=reduction)
    hs, ws, bs = (t.clone().requires_grad_() for t in (h, w, b))
    loss = tf.fused_linear_topd_kl_loss(hs, ws, idx, lp, bias=bs, backend=backend, chunk_size=6, **kw)
    loss.sum().backward()
    hr, wr, br = (t.double().requires_grad_() for t in (h, w, b))
    want = reference_loss(hr @ wr.T + br, idx, lp, **kw)
    want.sum().backward()
    assert_loss_close(loss.detach(), want.detach())
    for got_g, want_g in ((hs.grad, hr.grad), (ws.grad, wr.grad), (bs.grad, br.grad)):
        assert_grad_close(got_g, want_g)
    assert (hs.grad[~mask] == 0).all()


def test_fused_linear_frozen_head_has_no_weight_grad(backend):
    h, w, _, idx, lp = _fused_case(15, n=2 * 9)
    hs = h.reshape(2, 9, 32).clone().requires_grad_()
    loss = tf.fused_linear_topd_kl_loss(hs, w, idx.reshape(2, 9, 5), lp.reshape(2, 9, 5), backend=backend)
    loss.backward()
    assert w.grad is None
    hr = h.double().requires_grad_()
    reference_loss(hr @ w.double().T, idx, lp).backward()
    assert_grad_close(hs.grad.reshape(18, 32), hr.grad)


def test_fused_linear_module_and_all_masked(backend):
    h, w, _, idx, lp = _fused_case(16, n=5)
    hs = h.clone().requires_grad_()
    mod = tf.FusedLinearTopDKLLoss(backend=backend, chunk_size=2)
    loss = mod(hs, w, idx, lp, mask=torch.zeros(5, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0
    assert (hs.grad == 0).all()


def test_fused_linear_bf16(backend):
    h, w, b, idx, lp = _fused_case(17, dtype=torch.bfloat16)
    hs = h.clone().requires_grad_()
    loss = tf.fused_linear_topd_kl_loss(hs, w, idx, lp, bias=b, backend=backend)
    loss.backward()
    hr = h.double().requires_grad_()
    want = reference_loss(hr @ w.double().T + b.double(), idx, lp)
    want.backward()
    # logits are produced by a bf16 matmul, so compare with bf16-level tolerance
    assert abs(loss.item() - want.item()) <= 2e-2 * abs(want.item())
    assert_grad_close(hs.grad, hr.grad, rel=3e-2)
