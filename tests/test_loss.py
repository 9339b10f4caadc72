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


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("head", ["frozen", "trainable", "bias_only"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_fused_linear_chunk_paths(backend, masked, head, reduction):
    """Every sweep path (contiguous chunks or masked rows gathered; head frozen, trainable or
    only the bias trainable; gradients in the forward sweep or recomputed for "none") with
    N = 23 in chunks of 5 (a short last chunk), against the float64 loss from the math."""
    h, w, b, idx, lp = _fused_case(41)
    labels = torch.randint(0, 1000, (23,), generator=torch.Generator().manual_seed(4))
    labels[[0, 7]] = -100
    mask = None
    if masked:
        mask = torch.ones(23, dtype=torch.bool)
        mask[[0, 5, 6, 22]] = False
    kw = dict(temperature=0.9, labels=labels, ce_weight=0.2, reduction=reduction, mask=mask)
    seed = torch.linspace(-1.5, 2.0, 23)  # a non-uniform grad_output for "none"
    train_w, train_b = head == "trainable", head != "frozen"
    hs = h.clone().requires_grad_()
    ws, bs = w.clone().requires_grad_(train_w), b.clone().requires_grad_(train_b)
    loss = tf.fused_linear_topd_kl_loss(hs, ws, idx, lp, bias=bs, backend=backend, chunk_size=5, **kw)
    (loss * seed).sum().backward() if reduction == "none" else (loss * 1.7).backward()
    hr, wr, br = (t.double().requires_grad_() for t in (h, w, b))
    want = _math_loss(hr @ wr.T + br, idx, lp, **kw)
    (want * seed.double()).sum().backward() if reduction == "none" else (want * 1.7).backward()
    assert_loss_close(loss.detach(), want.detach())
    assert_grad_close(hs.grad, hr.grad)
    assert (ws.grad is not None) == train_w and (bs.grad is not None) == train_b
    if train_w:
        assert_grad_close(ws.grad, wr.grad)
    if train_b:
        assert_grad_close(bs.grad, br.grad)
    if masked:
        assert (hs.grad[~mask] == 0).all()


def test_fused_linear_default_chunks_are_equal(backend, monkeypatch):
    """The default chunk size comes from the memory budget, split into equal chunks (no short
    last chunk with a slow GEMM), and the result does not depend on it."""
    import tsubasa_fast.loss as loss_mod

    monkeypatch.setitem(loss_mod._CHUNK_BYTES, "cpu", 10 * 1000 * 4)  # 10 rows of V=1000
    monkeypatch.setitem(loss_mod._MIN_CHUNK_ROWS, "cpu", 1)
    cpu = torch.device("cpu")
    assert loss_mod._chunk_rows(None, 23, 1000, torch.float32, cpu) == 8  # 3 chunks: 8, 8, 7
    assert loss_mod._chunk_rows(None, 20, 1000, torch.float32, cpu) == 10
    assert loss_mod._chunk_rows(None, 7, 1000, torch.float32, cpu) == 7
    assert loss_mod._chunk_rows(None, 23, 1000, torch.float64, cpu) == 5  # 5 rows of 8 bytes
    h, w, b, idx, lp = _fused_case(42)
    hs, ws = h.clone().requires_grad_(), w.clone().requires_grad_()
    loss = tf.fused_linear_topd_kl_loss(hs, ws, idx, lp, bias=b, backend=backend)
    loss.backward()
    hr, wr = h.double().requires_grad_(), w.double().requires_grad_()
    want = _math_loss(hr @ wr.T + b.double(), idx, lp)
    want.backward()
    assert_loss_close(loss.detach(), want.detach())
    assert_grad_close(hs.grad, hr.grad)
    assert_grad_close(ws.grad, wr.grad)
    got = tf.fused_linear_select_topd(h, w, 5, bias=b, backend=backend)
    ref_idx, _ = reference.select_topd(h.double() @ w.double().T + b.double(), 5)
    assert torch.equal(got.indices.long(), ref_idx.long())


def test_fused_linear_bf16_trainable_head(backend):
    h, w, b, idx, lp = _fused_case(43, dtype=torch.bfloat16)
    hs, ws = h.clone().requires_grad_(), w.clone().requires_grad_()
    loss = tf.fused_linear_topd_kl_loss(hs, ws, idx, lp, bias=b, backend=backend, chunk_size=7)
    loss.backward()
    assert ws.grad.dtype == torch.bfloat16
    hr, wr = h.double().requires_grad_(), w.double().requires_grad_()
    want = _math_loss(hr @ wr.T + b.double(), idx, lp)
    want.backward()
    # logits are produced by a bf16 matmul, so compare with bf16-level tolerance
    assert abs(loss.item() - want.item()) <= 2e-2 * abs(want.item())
    assert_grad_close(hs.grad, hr.grad, rel=3e-2)
    assert_grad_close(ws.grad, wr.grad, rel=3e-2)


# ------------------------------------------------------------- issue 11: the nine rows
# Checked against a float64 loss written from the definitions below (probabilities and
# log_softmax), not against the project's reference, which row 3 showed can itself be wrong.


def _math_rows(z, idx, lp, *, tail="renorm", temperature=1.0, labels=None, ce_weight=0.0):
    """Per-position float64 loss from the definitions: KL(p || q) over the teacher's entries,
    the bucket tail as one more category (Q_rest = the student's mass outside the set),
    and ce_weight * -log q_label."""
    log_q = torch.log_softmax(z.double() / temperature, dim=-1)
    idx = idx.long()
    lp = lp.double()
    log_q_set = log_q.gather(-1, idx)
    if tail == "renorm":
        p = torch.softmax(lp, dim=-1)
        rows = (p * (p.log() - log_q_set)).sum(-1)
    else:
        p = lp.exp()
        rows = (p * (lp - log_q_set)).sum(-1)
        if tail == "bucket":
            in_set = torch.zeros_like(log_q, dtype=torch.bool).scatter_(-1, idx, True)
            q_rest = (log_q.exp() * ~in_set).sum(-1).clamp_min(reference.TAIL_EPS)
            p_rest = (1 - p.sum(-1)).clamp_min(0)
            rows = rows + torch.xlogy(p_rest, p_rest) - p_rest * q_rest.log()
    if ce_weight:
        use = labels != -100
        ce = -log_q.gather(-1, labels.long().clamp_min(0).unsqueeze(-1)).squeeze(-1)
        rows = rows + ce_weight * torch.where(use, ce, torch.zeros_like(ce))
    return rows


def _math_loss(z, idx, lp, *, mask=None, reduction="mean", **kw):
    rows = _math_rows(z, idx, lp, **kw)
    if mask is not None:
        rows = rows * mask
    if reduction == "none":
        return rows
    count = rows.numel() if mask is None else int(mask.sum())
    return rows.sum() if reduction == "sum" else rows.sum() / max(count, 1)


def _math_grad(z, idx, lp, **kw):
    zr = z.detach().double().requires_grad_()
    loss = _math_loss(zr, idx, lp, **kw)
    loss.sum().backward()
    return loss.detach(), zr.grad


# Row 1: fused linear, double backward / retain_graph / autograd.grad twice.
def test_row1_fused_linear_backward_twice_is_exact(backend):
    h, w, b, idx, lp = _fused_case(31, n=9)
    hs, ws = h.clone().requires_grad_(), w.clone().requires_grad_()
    loss = tf.fused_linear_topd_kl_loss(hs, ws, idx, lp, backend=backend, chunk_size=4) * 3.7
    loss.backward(retain_graph=True)
    loss.backward()
    hr, wr = h.double().requires_grad_(), w.double().requires_grad_()
    (_math_loss(hr @ wr.T, idx, lp) * 3.7).backward()
    assert_grad_close(hs.grad, 2 * hr.grad)
    assert_grad_close(ws.grad, 2 * wr.grad)
    # autograd.grad twice: the first returned tensors are left untouched
    hs.grad = ws.grad = None
    loss = tf.fused_linear_topd_kl_loss(hs, ws, idx, lp, backend=backend) * 3.7
    first = torch.autograd.grad(loss, (hs, ws), retain_graph=True)
    kept = [t.clone() for t in first]
    second = torch.autograd.grad(loss, (hs, ws))
    for f, k, s_, want in zip(first, kept, second, (hr.grad, wr.grad)):
        assert torch.equal(f, k)
        assert torch.equal(s_, k)
        assert_grad_close(f, want)


# Row 2: topd_kl_loss under retain_graph, autograd.grad twice and jacobian.
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_row2_topd_kl_backward_twice_and_jacobian(backend, reduction):
    x, idx, lp = make_case(4, 50, 3, seed=32)
    xs = x.clone().requires_grad_()
    loss = tf.topd_kl_loss(xs, idx, lp, reduction=reduction, backend=backend) * 3.7
    loss.sum().backward(retain_graph=True)
    loss.sum().backward()
    _, want = _math_grad(x * 1.0, idx, lp, reduction=reduction)
    assert_grad_close(xs.grad, 2 * 3.7 * want)
    xs.grad = None
    loss = tf.topd_kl_loss(xs, idx, lp, reduction=reduction, backend=backend).sum()
    (first,) = torch.autograd.grad(loss, xs, retain_graph=True)
    kept = first.clone()
    (second,) = torch.autograd.grad(loss, xs)
    assert torch.equal(first, kept) and torch.equal(second, kept)
    jac = torch.autograd.functional.jacobian(
        lambda t: tf.topd_kl_loss(t, idx, lp, reduction=reduction, backend=backend), x)
    want_jac = torch.autograd.functional.jacobian(
        lambda t: _math_loss(t, idx, lp, reduction=reduction), x.double())
    assert_grad_close(jac, want_jac)


# Row 3: bucket tail with the student confident on the teacher's set (Q_rest ~ 4e-7).
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_row3_bucket_tail_when_the_student_is_confident(backend, temperature):
    g = torch.Generator().manual_seed(33)
    n, vocab, d = 3, 1000, 5
    x = torch.randn(n, vocab, generator=g)
    idx = torch.stack([torch.randperm(vocab, generator=g)[:d] for _ in range(n)])
    x.scatter_(1, idx, 20.0 * temperature + torch.randn(n, d, generator=g) * 0.1)
    lp = torch.log(0.9 * torch.softmax(torch.randn(n, d, generator=g), -1))  # rest mass 0.1
    got, grad = _run(x, idx, lp, backend, tail="bucket", temperature=temperature)
    want, wgrad = _math_grad(x, idx, lp, tail="bucket", temperature=temperature)
    assert abs(got.item() - want.item()) <= 1e-5 * abs(want.item())
    assert_grad_close(grad, wgrad)
    # the tail's gradient outside the set is kept, element by element
    outside = torch.ones_like(x, dtype=torch.bool).scatter_(1, idx, False)
    rel = ((grad.double() - wgrad).abs() / wgrad.abs())[outside]
    assert rel.max() < 1e-3, rel.max()


# Row 4: no gradient work under no_grad or when nothing requires grad.
class _Recorder:
    """Wraps a backend module and records whether topd_kl was asked for a gradient."""

    def __init__(self, impl):
        self.impl, self.grad_outs = impl, []
        self.NAME = impl.NAME

    def topd_kl(self, logits, targets, temperature, scale, grad_out):
        self.grad_outs.append(grad_out)
        return self.impl.topd_kl(logits, targets, temperature, scale, grad_out)


def _recording(monkeypatch, backend):
    import tsubasa_fast.loss as loss_mod

    rec = _Recorder(loss_mod.resolve_backend(backend, torch.device("cpu")))
    monkeypatch.setattr(loss_mod, "resolve_backend", lambda name, device: rec)
    return rec


def test_row4_no_gradient_work_without_autograd(backend, monkeypatch):
    x, idx, lp = make_case(5, 300, 5, seed=34)
    h, w, _, fidx, flp = _fused_case(34, n=7, vocab=300)
    want = _math_loss(x, idx, lp)
    want_f = _math_loss(h.double() @ w.double().T, fidx, flp)
    rec = _recording(monkeypatch, backend)
    xs, hs, ws = (t.clone().requires_grad_() for t in (x, h, w))
    with torch.no_grad():
        got = tf.topd_kl_loss(xs, idx, lp, backend=backend)
        got_f = tf.fused_linear_topd_kl_loss(hs, ws, fidx, flp, backend=backend, chunk_size=3)
    with torch.inference_mode():
        tf.topd_kl_loss(xs, idx, lp, backend=backend)
    # grad mode on, but no input requires grad
    got2 = tf.topd_kl_loss(x, idx, lp, backend=backend)
    got2_f = tf.fused_linear_topd_kl_loss(h, w, fidx, flp, backend=backend)
    assert rec.grad_outs and all(g is None for g in rec.grad_outs)
    for loss, ref in ((got, want), (got_f, want_f), (got2, want), (got2_f, want_f)):
        assert not loss.requires_grad
        assert_loss_close(loss, ref)
    # and with autograd on, a gradient is computed (the recorder sees it)
    tf.topd_kl_loss(xs, idx, lp, backend=backend).backward()
    assert rec.grad_outs[-1] is not None


# Row 5: float64 in, float64 math and result (gradcheck at eps=1e-6).
@pytest.mark.parametrize("tail", reference.TAIL_MODES)
def test_row5_float64_gradcheck(backend, tail):
    x, idx, lp = make_case(4, 16, 3, seed=35, dtype=torch.float64)
    labels = torch.tensor([3, -100, 7, idx[3, 0].item()])
    kw = dict(tail=tail, temperature=1.3, labels=labels, ce_weight=0.4)
    loss = tf.topd_kl_loss(x, idx, lp, backend=backend, **kw)
    assert loss.dtype == torch.float64
    h, w, b, fidx, flp = _fused_case(35, n=3, hdim=4, vocab=16, d=3, dtype=torch.float64)
    fused = tf.fused_linear_topd_kl_loss(h, w, fidx, flp, bias=b, backend=backend, tail=tail)
    assert fused.dtype == torch.float64
    if backend == "triton":  # documented: the Triton kernels compute in float32
        assert_loss_close(loss, _math_loss(x, idx, lp, **kw))
        return
    assert abs(loss.item() - _math_loss(x, idx, lp, **kw).item()) <= 1e-6 * abs(loss.item())
    for reduction in ("mean", "none"):
        assert torch.autograd.gradcheck(
            lambda t: tf.topd_kl_loss(t, idx, lp, backend=backend, reduction=reduction, **kw),
            (x.clone().requires_grad_(),), eps=1e-6, fast_mode=reduction == "none")
    assert torch.autograd.gradcheck(
        lambda hh, ww: tf.fused_linear_topd_kl_loss(hh, ww, fidx, flp, bias=b, backend=backend,
                                                   tail=tail, chunk_size=2),
        (h.clone().requires_grad_(), w.clone().requires_grad_()), eps=1e-6, fast_mode=True)


# Row 6: huge logits: the right finite answer while representable, else one true error.
def test_row6_huge_logits(backend):
    g = torch.Generator().manual_seed(36)
    n, vocab, d = 4, 500, 3
    idx = torch.stack([torch.randperm(vocab, generator=g)[:d] for _ in range(n)])
    lp = torch.log_softmax(torch.randn(n, d, generator=g), -1)
    x = torch.full((n, vocab), 2.0e38)
    x.scatter_(1, idx[:, :2], 3.0e38)
    x.scatter_(1, idx[:, 2:], 2.9e38)  # log q = -1e37 - log 2 there: large but a float32
    got, grad = _run(x, idx, lp, backend)
    want, wgrad = _math_grad(x, idx, lp)
    assert torch.isfinite(got) and got.item() > 1e36
    assert_loss_close(got, want)
    assert_grad_close(grad, wgrad)
    # rows of ~1e38: the mean is finite and right, the float32 sum is not representable
    x2 = torch.full((n, vocab), -1.0e38)
    x2.scatter_(1, idx[:, :1], 3.0e38)
    x2.scatter_(1, idx[:, 1:], 1.0e38)  # log q = -2e38 at two teacher entries
    got = tf.topd_kl_loss(x2, idx, lp, backend=backend)
    assert_loss_close(got, _math_loss(x2, idx, lp))
    with pytest.raises(ValueError, match=r"sum of the per-position losses .* overflows torch.float32"):
        tf.topd_kl_loss(x2, idx, lp, reduction="sum", backend=backend)
    # log q itself past float32 (-6e38), or logits / temperature past it: one true message
    x3 = x2.clone()
    x3.scatter_(1, idx[:, 1:], -3.0e38)
    with pytest.raises(ValueError, match=r"loss at flattened position 0 overflows torch.float32"):
        tf.topd_kl_loss(x3, idx, lp, backend=backend)
    with pytest.raises(ValueError, match=r"overflows torch.float32: student_logits / temperature spans"):
        tf.topd_kl_loss(x, idx, lp, temperature=0.5, backend=backend)


# Row 7: small integer index dtypes, with the range check done on int64 values.
@pytest.mark.parametrize("dtype,vocab,ids", [(torch.int16, 40_000, [[5, 100]]),
                                             (torch.uint8, 997, [[5, 100]]),
                                             (torch.int32, 1000, [[999, 0]])])
def test_row7_small_integer_indices(backend, dtype, vocab, ids):
    x = torch.randn(1, vocab, generator=torch.Generator().manual_seed(37))
    idx = torch.tensor(ids, dtype=dtype)
    lp = torch.tensor([[-0.5, -1.5]])
    labels = torch.tensor([7], dtype=dtype)
    got, grad = _run(x, idx, lp, backend, labels=labels, ce_weight=0.5)
    want, wgrad = _math_grad(x, idx, lp, labels=labels, ce_weight=0.5)
    assert_loss_close(got, want)
    assert_grad_close(grad, wgrad)


@pytest.mark.parametrize("dtype,vocab,bad", [(torch.int16, 30_000, 30_001), (torch.uint8, 200, 250)])
def test_row7_small_integer_indices_out_of_range(backend, dtype, vocab, bad):
    x = torch.randn(1, vocab)
    idx = torch.tensor([[3, bad]], dtype=dtype)
    with pytest.raises(ValueError, match=f"teacher_indices holds {bad} .* outside the student vocabulary \\[0, {vocab}\\)"):
        tf.topd_kl_loss(x, idx, torch.tensor([[-0.5, -1.5]]), backend=backend)


# Row 8: the CE term is averaged over unmasked positions (documented), checked with F.cross_entropy.
def test_row8_ce_normalisation_against_cross_entropy(backend):
    x, idx, lp = make_case(6, 300, 5, seed=38)
    labels = torch.tensor([-100, 17, -100, -100, 250, -100])  # 4 of 6 ignored
    mask = torch.ones(6, dtype=torch.bool)
    for m, n_rows in ((None, 6), (mask.clone().index_fill_(0, torch.tensor([0, 3]), False), 4)):
        with_ce = tf.topd_kl_loss(x, idx, lp, labels=labels, ce_weight=1.0, mask=m, temperature=1.5,
                                  backend=backend)
        without = tf.topd_kl_loss(x, idx, lp, mask=m, temperature=1.5, backend=backend)
        ce_sum = F.cross_entropy(x.double() / 1.5, labels, reduction="sum")  # ignores -100
        torch.testing.assert_close((with_ce - without).double(), ce_sum / n_rows, rtol=1e-5, atol=1e-6)
        # F.cross_entropy's own mean divides by the 2 labelled positions instead
        torch.testing.assert_close((with_ce - without).double() * n_rows / 2,
                                   F.cross_entropy(x.double() / 1.5, labels), rtol=1e-5, atol=1e-6)
    h, w, _, fidx, flp = _fused_case(38, n=6, vocab=300)
    ce = (tf.fused_linear_topd_kl_loss(h, w, fidx, flp, labels=labels, ce_weight=1.0, backend=backend)
          - tf.fused_linear_topd_kl_loss(h, w, fidx, flp, backend=backend))
    want = F.cross_entropy(h.double() @ w.double().T, labels, reduction="sum") / 6
    torch.testing.assert_close(ce.double(), want, rtol=1e-5, atol=1e-6)


# Row 9: -inf student logits (vocabulary masking) where the teacher puts no mass.
@pytest.mark.parametrize("tail", reference.TAIL_MODES)
def test_row9_minus_inf_student_logits(backend, tail):
    g = torch.Generator().manual_seed(39)
    n, vocab, d = 5, 10_000, 5
    x = torch.randn(n, vocab, generator=g) * 2
    x[:, :4500] = float("-inf")  # whole leading blocks masked out
    x[:, 7000:7100] = float("-inf")
    allowed = torch.cat([torch.arange(4500, 7000), torch.arange(7100, vocab)])
    idx = allowed[torch.stack([torch.randperm(allowed.numel(), generator=g)[:d] for _ in range(n)])]
    lp = torch.log(0.8 * torch.softmax(torch.randn(n, d, generator=g), -1))
    labels = allowed[torch.randint(0, allowed.numel(), (n,), generator=g)]
    kw = dict(tail=tail, temperature=0.8, labels=labels, ce_weight=0.3)
    got, grad = _run(x, idx, lp, backend, **kw)
    want, wgrad = _math_grad(x, idx, lp, **kw)
    assert torch.isfinite(got) and torch.isfinite(grad).all()
    assert_loss_close(got, want)
    assert_grad_close(grad, wgrad)
    assert (grad[x == float("-inf")] == 0).all()
    # the fused path: an lm_head bias of -inf masks tokens the same way
    h, w, _, _, _ = _fused_case(39, n=n, vocab=vocab)
    bias = torch.zeros(vocab)
    bias[:4500] = float("-inf")
    bias[7000:7100] = float("-inf")
    hs = h.clone().requires_grad_()
    loss = tf.fused_linear_topd_kl_loss(hs, w, idx, lp, bias=bias, backend=backend, **kw)
    loss.backward()
    hr = h.double().requires_grad_()
    want_f = _math_loss(hr @ w.double().T + bias.double(), idx, lp, **kw)
    want_f.backward()
    assert_loss_close(loss.detach(), want_f.detach())
    assert_grad_close(hs.grad, hr.grad)


def test_row9_minus_inf_at_a_teacher_index_or_label_is_an_error(backend):
    x, idx, lp = make_case(4, 300, 5, seed=40)
    x2 = x.clone()
    x2[2, idx[2, 3]] = float("-inf")
    with pytest.raises(ValueError, match=f"student_logits is -inf at teacher token {int(idx[2, 3])} "
                                         r"\(at flattened position 2\)"):
        tf.topd_kl_loss(x2, idx, lp, backend=backend)
    x3 = x.clone()
    off = next(c for c in range(300) if c not in idx[1].tolist())  # a label off the teacher set
    labels = torch.tensor([1, off, 3, 4])
    x3[1, off] = float("-inf")
    with pytest.raises(ValueError, match=rf"student_logits is -inf at the CE label {off} \(at flattened position 1\)"):
        tf.topd_kl_loss(x3, idx, lp, labels=labels, ce_weight=1.0, backend=backend)
    h, w, _, fidx, flp = _fused_case(40, n=4, vocab=300)
    bias = torch.zeros(300)
    bias[fidx[0, 0]] = float("-inf")
    with pytest.raises(ValueError, match=r"the student logits\) is -inf at teacher token"):
        tf.fused_linear_topd_kl_loss(h, w, fidx, flp, bias=bias, backend=backend)


def test_inplace_backward_writes_the_gradient_into_the_logits(backend):
    x, idx, lp = make_case(7, 1000, 5, seed=41)
    want, wgrad = _math_grad(x, idx, lp, tail="bucket", temperature=1.2)
    leaf = x.clone().requires_grad_()
    z = leaf * 1.0  # a temporary, like an lm_head output
    loss = tf.topd_kl_loss(z, idx, lp, tail="bucket", temperature=1.2, backend=backend,
                           inplace_backward=True)
    loss.backward()
    assert_loss_close(loss.detach(), want)
    assert_grad_close(leaf.grad, wgrad)
    assert_grad_close(z.detach(), wgrad)  # z's storage now holds the gradient
    # a graph that saved the logits refuses to run instead of using the overwritten values
    leaf2 = x.clone().requires_grad_()
    e = leaf2.exp()  # exp saves its output
    tf.topd_kl_loss(e, idx, lp, backend=backend, inplace_backward=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        e.sum().backward()
    bad = x.clone()
    bad[3, 5] = float("nan")
    with pytest.raises(ValueError, match="student_logits gives a non-finite loss at flattened position 3"):
        tf.topd_kl_loss(bad.requires_grad_() * 1.0, idx, lp, backend=backend, inplace_backward=True)


def test_grad_workspace_is_reused_only_when_the_last_gradient_is_gone(backend):
    x, idx, lp = make_case(6, 1000, 5, seed=43)
    ws = tf.loss.grad_workspace
    ws.release()
    want, wgrad = _math_grad(x, idx, lp, tail="bucket")
    first = x.clone().requires_grad_()
    tf.topd_kl_loss(first, idx, lp, tail="bucket", backend=backend).backward()
    kept = first.grad  # still alive: the next call must not write into it
    kept_copy = kept.clone()
    fresh, reused = ws.fresh, ws.reused
    other = (x * 0.5).requires_grad_()
    tf.topd_kl_loss(other, idx, lp, tail="bucket", backend=backend).backward()
    assert (ws.fresh, ws.reused) == (fresh + 1, reused)
    assert other.grad.data_ptr() != kept.data_ptr()
    assert torch.equal(kept, kept_copy)
    assert_grad_close(kept, wgrad)
    # once nobody holds the cached gradient, the next call writes into it (no new buffer)
    ptr = other.grad.data_ptr()
    del other, first, kept
    third = x.clone().requires_grad_()
    loss = tf.topd_kl_loss(third, idx, lp, tail="bucket", backend=backend)
    loss.backward()
    assert ws.reused == reused + 1 and third.grad.data_ptr() == ptr
    assert_loss_close(loss.detach(), want)
    assert_grad_close(third.grad, wgrad)
    # a smaller call reuses the larger buffer; disabled, every call allocates
    small = x[:2].clone().requires_grad_()
    tf.topd_kl_loss(small, idx[:2], lp[:2], tail="bucket", backend=backend).backward()
    assert_grad_close(small.grad, _math_grad(x[:2], idx[:2], lp[:2], tail="bucket")[1])
    ws.enabled = False
    try:
        del small
        before = (ws.fresh, ws.reused)
        tf.topd_kl_loss(x.clone().requires_grad_(), idx, lp, backend=backend).backward()
        assert (ws.fresh, ws.reused) == before
    finally:
        ws.enabled = True
        ws.release()
