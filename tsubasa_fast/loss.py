"""The fused top-d distillation loss: public functions and their autograd glue.

* ``select_topd`` / ``fused_linear_select_topd``: the teacher's top-d tokens with
  full-vocabulary log-probabilities (what the teacher cache stores).
* ``topd_kl_loss`` / ``fused_linear_topd_kl_loss``: forward KL(teacher || student) on the
  teacher's top-d support (math in ``ops/reference.py``).

Every function validates its input (a bad argument raises ValueError naming it) and runs on
the backend picked by ``ops.dispatch.resolve_backend``. When autograd will want them,
gradients are computed in the forward pass (one [N, V] buffer for ``topd_kl_loss``; none for
the fused-linear variant, which sweeps the lm_head chunk by chunk and only ever holds one
chunk of logits); under ``torch.no_grad`` or with no input requiring grad there is no
gradient work at all. Backward never modifies a saved or returned tensor, so
``retain_graph``, repeated ``torch.autograd.grad`` and ``jacobian`` are exact.

Losses are float64 for float64 inputs (the torch backend then computes in float64) and
float32 otherwise. A row whose loss is not finite raises ValueError saying why: NaN or +inf
logits, -inf at a teacher index or at the CE label, or a loss too large for its dtype.
"""

from __future__ import annotations

import threading
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .ops.dispatch import resolve_backend
from .ops.reference import IGNORE_INDEX, TAIL_MODES, compute_dtype
from .ops.targets import TopDTargets, prepare_targets

REDUCTIONS = ("mean", "sum", "none")
# Logit-chunk budgets for the fused-linear sweeps. On a GPU a chunk holds >= 1,024 tokens
# where memory allows so each sweep of the lm_head is compute-bound. On CPU 256 MiB (441
# rows at V = 151,936); measured at N = 2,048, H = 1,024 (AVX-512, 2 threads): 220-row
# chunks took 12 % longer than 512-row ones, 683-row ones were no faster.
_CHUNK_BYTES = {"cuda": 1 << 30, "cpu": 256 << 20}
_MIN_CHUNK_ROWS = {"cuda": 1024, "cpu": 16}
# Teacher log-probabilities slightly above 0 come from fp16/bf16 rounding; more is misuse.
_LOGPROB_TOLERANCE = 1e-3


class TopD(NamedTuple):
    """Top-d entries per position: int32 token ids and float32 full-vocabulary log-probs."""

    indices: torch.Tensor
    logprobs: torch.Tensor


# --------------------------------------------------------------------------- validation


def _check_float(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")


def _check_temperature(temperature) -> float:
    t = float(temperature)
    if not (t > 0 and t != float("inf")):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    return t


def _check_d(d, vocab: int) -> int:
    if isinstance(d, bool) or not isinstance(d, int):
        raise ValueError(f"d must be an int, got {d!r}")
    if d < 1:
        raise ValueError(f"d must be >= 1, got {d}")
    if d > vocab:
        raise ValueError(f"d={d} is larger than the vocabulary size V={vocab}")
    return d


def _check_same_device(**tensors) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        raise ValueError(f"all tensors must be on one device, got {devices}")


def _check_finite_rows(values: torch.Tensor, row_mask: torch.Tensor | None, name: str) -> None:
    bad = ~torch.isfinite(values)
    if bad.dim() > 1:
        bad = bad.any(dim=-1)
    if row_mask is not None:
        bad &= row_mask
    if bool(bad.any()):
        pos = int(bad.nonzero()[0, 0])
        raise ValueError(f"{name} contains NaN or inf (first at flattened position {pos})")


def _first_bad_row(rows: torch.Tensor, row_mask: torch.Tensor) -> int | None:
    bad = ~torch.isfinite(rows) & row_mask
    return int(bad.nonzero()[0, 0]) if bool(bad.any()) else None


def _explain_bad_row(name: str, z: torch.Tensor, pos: int, targets: TopDTargets, temperature: float,
                     dtype: torch.dtype) -> ValueError:
    """Why the loss of row ``pos`` (its logits: z) is not finite, as a true message."""
    row = targets.rows(torch.tensor([pos], device=z.device))
    where = f"at flattened position {pos}"
    if bool(torch.isnan(z).any()):
        return ValueError(f"{name} contains NaN ({where})")
    if bool((z == float("inf")).any()):
        return ValueError(f"{name} contains +inf ({where})")
    at_teacher = z[row.indices[0]] == float("-inf")
    if bool(at_teacher.any()):
        tok = int(row.indices[0][at_teacher][0])
        return ValueError(
            f"{name} is -inf at teacher token {tok} ({where}): the teacher puts mass on a token "
            "the student rules out, so the KL is infinite (-inf is allowed only where the "
            "teacher has no entry)"
        )
    if row.labels is not None and int(row.labels[0]) >= 0 and bool(z[int(row.labels[0])] == float("-inf")):
        return ValueError(f"{name} is -inf at the CE label {int(row.labels[0])} ({where})")
    zt = z.double() / temperature
    return ValueError(
        f"the loss {where} overflows {dtype}: {name} / temperature spans "
        f"[{float(zt.min()):.3g}, {float(zt.max()):.3g}], too wide for {dtype}; scale the "
        "logits down or pass float64"
    )


def _targets_for(
    lead_shape: torch.Size,
    vocab: int,
    device: torch.device,
    student_dtype: torch.dtype,
    teacher_indices,
    teacher_logprobs,
    *,
    tail: str,
    mask,
    labels,
    ce_weight,
) -> TopDTargets:
    """Validates the teacher side of a loss call and flattens it to [N, d]."""
    if not isinstance(teacher_indices, torch.Tensor) or teacher_indices.is_floating_point() or (
        teacher_indices.dtype == torch.bool
    ):
        raise ValueError("teacher_indices must be an integer torch.Tensor")
    _check_float("teacher_logprobs", teacher_logprobs)
    if teacher_indices.dim() == 0 or tuple(teacher_indices.shape[:-1]) != tuple(lead_shape):
        raise ValueError(
            f"teacher_indices has shape {tuple(teacher_indices.shape)}; expected "
            f"{tuple(lead_shape)} + (d,) to match the leading dims of the student"
        )
    if teacher_logprobs.shape != teacher_indices.shape:
        raise ValueError(
            f"teacher_logprobs has shape {tuple(teacher_logprobs.shape)}, teacher_indices "
            f"has {tuple(teacher_indices.shape)}: they must match"
        )
    d = teacher_indices.shape[-1]
    _check_d(d, vocab)
    if tail not in TAIL_MODES:
        raise ValueError(f"tail must be one of {TAIL_MODES}, got {tail!r}")
    try:
        ce_weight = float(ce_weight)
    except (TypeError, ValueError):
        raise ValueError(f"ce_weight must be a number, got {ce_weight!r}") from None
    if not (ce_weight >= 0 and ce_weight != float("inf")):
        raise ValueError(f"ce_weight must be a finite number >= 0, got {ce_weight!r}")
    n = 1
    for s in lead_shape:
        n *= s
    if mask is None:
        row_mask = torch.ones(n, dtype=torch.bool, device=device)
    else:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise ValueError("mask must be a boolean torch.Tensor (False = ignored position)")
        if tuple(mask.shape) != tuple(lead_shape):
            raise ValueError(
                f"mask has shape {tuple(mask.shape)}; expected {tuple(lead_shape)}"
            )
        row_mask = mask.reshape(n)
    if labels is not None:
        if not isinstance(labels, torch.Tensor) or labels.is_floating_point():
            raise ValueError("labels must be an integer torch.Tensor")
        if tuple(labels.shape) != tuple(lead_shape):
            raise ValueError(f"labels has shape {tuple(labels.shape)}; expected {tuple(lead_shape)}")
    elif ce_weight > 0:
        raise ValueError("labels is required when ce_weight > 0")
    _check_same_device(
        student=torch.empty(0, device=device), teacher_indices=teacher_indices,
        teacher_logprobs=teacher_logprobs, mask=mask, labels=labels,
    )
    # int64 before any comparison: an int16 / uint8 tensor compared with V would wrap V
    idx = teacher_indices.reshape(n, d).long()
    lp = teacher_logprobs.reshape(n, d)
    out_of_range = ((idx < 0) | (idx >= vocab)).any(dim=-1) & row_mask
    if bool(out_of_range.any()):
        pos = int(out_of_range.nonzero()[0, 0])
        bad = idx[pos][(idx[pos] < 0) | (idx[pos] >= vocab)][0]
        raise ValueError(
            f"teacher_indices holds {int(bad)} at flattened position {pos}, outside the "
            f"student vocabulary [0, {vocab}) (a teacher from another model family?)"
        )
    _check_finite_rows(lp, row_mask, "teacher_logprobs")
    too_big = (lp > _LOGPROB_TOLERANCE).any(dim=-1) & row_mask
    if bool(too_big.any()):
        raise ValueError(
            "teacher_logprobs must be log-probabilities (<= 0); got values > 0 at flattened "
            f"position {int(too_big.nonzero()[0, 0])} (pass select_topd(...).logprobs, not logits)"
        )
    flat_labels = None
    if labels is not None and ce_weight > 0:
        flat_labels = labels.reshape(n).long()
        bad = ((flat_labels < 0) | (flat_labels >= vocab)) & (flat_labels != IGNORE_INDEX) & row_mask
        if bool(bad.any()):
            pos = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"labels holds {int(flat_labels[pos])} at flattened position {pos}; expected "
                f"a token id in [0, {vocab}) or {IGNORE_INDEX} (ignored)"
            )
    return prepare_targets(
        idx, lp, tail=tail, row_mask=row_mask, labels=flat_labels, ce_weight=ce_weight,
        raw_dtype=compute_dtype(student_dtype),
    )


def _check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def _grad_scale(reduction: str, count: int) -> float:
    return 1.0 / count if (reduction == "mean" and count > 0) else 1.0


def _wants_grad(*tensors) -> bool:
    """Whether autograd will ask for a gradient of any of these (False under no_grad)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _is_one(grad_output: torch.Tensor) -> bool:
    """True for the usual `loss.backward()` seed: the saved gradient is returned as it is
    (no [N, V] rescaling pass, no copy). On a GPU the check costs one sync per backward."""
    return grad_output.numel() == 1 and bool(grad_output == 1)


def _scaled(grad: torch.Tensor | None, factor: torch.Tensor) -> torch.Tensor | None:
    """grad * factor as a new tensor: the saved gradient is never modified, so a second
    backward (retain_graph, autograd.grad twice, jacobian) sees it unchanged."""
    return None if grad is None else grad * factor.to(grad.dtype)


def _reduce(rows: torch.Tensor, reduction: str, scale: float, lead_shape) -> torch.Tensor:
    """Reduces in float64 (a float32 running sum of large rows would overflow) and checks
    that the result fits the loss dtype."""
    if reduction == "none":
        return rows.reshape(lead_shape)
    total = rows.sum(dtype=torch.float64)
    out = (total * scale if reduction == "mean" else total).to(rows.dtype)
    if not bool(torch.isfinite(out)):
        raise ValueError(
            f"the {reduction} of the per-position losses ({float(total):.3g}) overflows {rows.dtype}; "
            "use reduction='mean' or float64 inputs"
        )
    return out


def _check_linear(hidden, weight, bias) -> tuple[int, int]:
    _check_float("hidden", hidden)
    _check_float("weight", weight)
    if hidden.dim() < 2:
        raise ValueError(f"hidden must have shape (..., H), got {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"weight must have shape (V, H) with H={hidden.shape[-1]} (the last dim of "
            f"hidden), got {tuple(weight.shape)}"
        )
    if weight.dtype != hidden.dtype:
        raise ValueError(f"hidden ({hidden.dtype}) and weight ({weight.dtype}) dtypes differ")
    if bias is not None:
        _check_float("bias", bias)
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
        if bias.dtype != hidden.dtype:
            raise ValueError(f"bias ({bias.dtype}) and hidden ({hidden.dtype}) dtypes differ")
    _check_same_device(hidden=hidden, weight=weight, bias=bias)
    return weight.shape[0], weight.shape[1]


def _chunk_rows(chunk_size, rows: int, vocab: int, dtype: torch.dtype, device: torch.device) -> int:
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
        return chunk_size
    kind = "cuda" if device.type == "cuda" else "cpu"
    elem = torch.finfo(dtype).bits // 8
    by_budget = max(_MIN_CHUNK_ROWS[kind], _CHUNK_BYTES[kind] // max(1, vocab * elem))
    rows = max(rows, 1)
    chunks = -(-rows // by_budget)
    return -(-rows // chunks)  # equal chunks: no small last one with an inefficient GEMM


# --------------------------------------------------------------------------- select_topd


def select_topd(logits: torch.Tensor, d: int, *, temperature: float = 1.0, backend: str = "auto") -> TopD:
    """The d most likely tokens per position of log_softmax(logits / temperature).

    logits: (..., V). Returns ``TopD(indices int32 (..., d), logprobs float32 (..., d))``
    sorted by descending probability, ties broken towards the lower token id.
    """
    _check_float("logits", logits)
    if logits.dim() < 1:
        raise ValueError("logits must have at least one dimension (..., V)")
    vocab = logits.shape[-1]
    _check_d(d, vocab)
    temperature = _check_temperature(temperature)
    impl = resolve_backend(backend, logits.device)
    flat = logits.detach().reshape(-1, vocab)
    if flat.shape[0] == 0:
        idx = torch.empty(0, d, dtype=torch.int32, device=logits.device)
        lp = torch.empty(0, d, dtype=torch.float32, device=logits.device)
    else:
        idx, lp = impl.select_topd(flat, d, temperature)
    _check_finite_rows(lp, None, "logits")
    lead = logits.shape[:-1]
    return TopD(idx.reshape(*lead, d), lp.reshape(*lead, d))


def fused_linear_select_topd(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    d: int,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    backend: str = "auto",
    chunk_size: int | None = None,
) -> TopD:
    """``select_topd(hidden @ weight.T + bias, d)`` without materialising the logits.

    hidden: (..., H); weight: (V, H) (the lm_head). Only one chunk of logits is alive at a
    time (``chunk_size`` rows; None picks one from a memory budget).
    """
    vocab, width = _check_linear(hidden, weight, bias)
    _check_d(d, vocab)
    temperature = _check_temperature(temperature)
    impl = resolve_backend(backend, hidden.device)
    flat = hidden.detach().reshape(-1, width)
    n = flat.shape[0]
    idx = torch.empty(n, d, dtype=torch.int32, device=hidden.device)
    lp = torch.empty(n, d, dtype=torch.float32, device=hidden.device)
    step = _chunk_rows(chunk_size, n, vocab, hidden.dtype, hidden.device)
    w = weight.detach()
    b = None if bias is None else bias.detach()
    with torch.no_grad():
        buf = torch.empty(min(step, n), vocab, dtype=hidden.dtype, device=hidden.device)
        for s in range(0, n, step):
            x = flat[s : s + step]
            logits = buf[: x.shape[0]]  # one buffer for every chunk
            if b is None:
                torch.mm(x, w.t(), out=logits)
            else:
                torch.addmm(b, x, w.t(), out=logits)
            idx[s : s + step], lp[s : s + step] = impl.select_topd(logits, d, temperature)
    _check_finite_rows(lp, None, "hidden @ weight.T (the logits)")
    lead = hidden.shape[:-1]
    return TopD(idx.reshape(*lead, d), lp.reshape(*lead, d))


# --------------------------------------------------------------------------- topd_kl_loss


class GradWorkspace:
    """A reused [N, V] gradient buffer for ``topd_kl_loss`` on CPU.

    A freshly allocated N x V buffer costs its first-touch page faults on every call (torch's
    CPU allocator hands blocks this large back to the OS on free): on the VMs measured here
    4-6x a copy of the logits, more than the whole kernel. The workspace keeps one buffer
    and hands it out again only when nothing else references its storage any more (storage
    use count 1: only this cache), so a returned gradient is never aliased by a later call;
    while the previous gradient is still alive (x.grad kept, retain_graph, ...) a fresh
    buffer is allocated (and cached in its place), counted in ``fresh``. The cost: one
    [N, V] buffer stays allocated between calls (a smaller call reuses a larger one);
    ``release()`` frees it, ``enabled = False`` turns the cache off. CUDA tensors never use
    it (the CUDA caching allocator already reuses memory).
    """

    def __init__(self) -> None:
        self.enabled = True
        self.reused = 0
        self.fresh = 0
        self._storage = None
        self._lock = threading.Lock()
        # private torch API (torch._inductor uses it too); without it the cache stays off
        self._use_count = getattr(torch._C, "_storage_Use_Count", None)

    def release(self) -> None:
        """Drops the cached buffer (a gradient handed out earlier stays valid)."""
        self._storage = None

    def empty_like(self, t: torch.Tensor) -> torch.Tensor:
        """An uninitialised tensor like ``t`` (contiguous), from the cache when it is free."""
        if not self.enabled or t.device.type != "cpu" or self._use_count is None:
            return torch.empty_like(t, memory_format=torch.contiguous_format)
        nbytes = t.numel() * t.element_size()
        with self._lock:
            st = self._storage
            if st is not None and self._use_count(st._cdata) == 1 and st.nbytes() >= nbytes:
                self.reused += 1
            else:
                self.fresh += 1
                st = torch.empty(nbytes, dtype=torch.uint8).untyped_storage()
                self._storage = st
            return torch.empty(0, dtype=t.dtype).set_(st, 0, t.shape, _contiguous_strides(t.shape))


def _contiguous_strides(shape) -> tuple[int, ...]:
    strides, acc = [], 1
    for size in reversed(shape):
        strides.append(acc)
        acc *= max(size, 1)
    return tuple(reversed(strides))


grad_workspace = GradWorkspace()




def _check_rows(rows, targets, name, logits_of_row, temperature, dtype) -> None:
    """Raises a ValueError saying why, when an unmasked row's loss is not finite."""
    pos = _first_bad_row(rows, targets.row_mask)
    if pos is not None:
        raise _explain_bad_row(name, logits_of_row(pos), pos, targets, temperature, dtype)


class _TopDKLFunction(torch.autograd.Function):
    """Loss and gradient in one kernel call; backward only scales the saved gradient."""

    @staticmethod
    def forward(ctx, logits, targets: TopDTargets, temperature, reduction, impl, lead_shape, inplace):
        count = int(targets.row_mask.sum())
        scale = _grad_scale(reduction, count)
        if inplace:
            rows = impl.topd_kl(logits, targets, temperature, scale, logits)
            # any graph that saved these logits now fails loudly instead of reading a gradient
            torch.autograd.graph.increment_version(logits)
            pos = _first_bad_row(rows, targets.row_mask)
            if pos is not None:
                raise ValueError(
                    f"student_logits gives a non-finite loss at flattened position {pos} (NaN or "
                    "+inf logits, -inf at a teacher index or the CE label, or a loss too large "
                    "for its dtype); with inplace_backward=True the logits were overwritten, so "
                    "call again without it for the exact cause"
                )
            ctx.save_for_backward(logits)  # saved after the bump: unpacks cleanly
        else:
            grad = grad_workspace.empty_like(logits)
            rows = impl.topd_kl(logits, targets, temperature, scale, grad)
            _check_rows(rows, targets, "student_logits", lambda p: logits[p], temperature, rows.dtype)
            ctx.save_for_backward(grad)
        ctx.reduction = reduction
        return _reduce(rows, reduction, scale, lead_shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        if ctx.reduction == "none":
            grad = _scaled(grad, grad_output.reshape(-1, 1))
        elif not _is_one(grad_output):
            grad = _scaled(grad, grad_output)
        return grad, None, None, None, None, None, None


def topd_kl_loss(
    student_logits: torch.Tensor,
    teacher_indices: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    *,
    temperature: float = 1.0,
    tail: str = "renorm",
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
    labels: torch.Tensor | None = None,
    ce_weight: float = 0.0,
    backend: str = "auto",
    inplace_backward: bool = False,
) -> torch.Tensor:
    """Forward KL(teacher || student) on the teacher's top-d support.

    student_logits: (..., V), differentiable; -inf entries (vocabulary masking) are allowed
    where the teacher has no entry. teacher_indices (any integer dtype) / teacher_logprobs:
    (..., d) from ``select_topd`` at the temperature you distil at (used as given).
    ``temperature`` divides the student logits (the CE term sees the same tempered logits).
    ``mask`` (bool, leading dims; False = ignored).

    Normalisation: "mean" divides the sum over unmasked positions by their number, for the
    KL *and* the CE term. The CE part is therefore
    ``ce_weight * F.cross_entropy(z, labels, reduction="sum") / n_unmasked`` (z = logits / T,
    labels of -100 add nothing but still count in n_unmasked), not ``F.cross_entropy``'s
    own mean over the labelled positions; multiply by n_unmasked / n_labelled to get that.
    With every position masked the loss is 0 with zero gradients. Returns float64 for
    float64 logits, else float32.

    ``inplace_backward=True`` writes the gradient into the logits' own storage instead of a
    new [N, V] buffer (no extra memory, no first-touch page faults): use it when the logits
    are a temporary (an lm_head output) that nothing reads afterwards. Their version counter
    is bumped, so autograd raises instead of computing wrong gradients if some other op saved
    them. A row with a non-finite loss still raises ValueError, but by then the logits are
    overwritten and the message cannot say which cause it was.
    """
    _check_float("student_logits", student_logits)
    if student_logits.dim() < 2:
        raise ValueError(
            f"student_logits must have shape (N, V) or (B, T, V), got {tuple(student_logits.shape)}"
        )
    reduction = _check_reduction(reduction)
    temperature = _check_temperature(temperature)
    vocab = student_logits.shape[-1]
    lead = student_logits.shape[:-1]
    targets = _targets_for(
        lead, vocab, student_logits.device, student_logits.dtype, teacher_indices,
        teacher_logprobs, tail=tail, mask=mask, labels=labels, ce_weight=ce_weight,
    )
    impl = resolve_backend(backend, student_logits.device)
    flat = student_logits.reshape(-1, vocab)
    if not flat.is_contiguous():
        flat = flat.contiguous()
    if _wants_grad(student_logits):
        return _TopDKLFunction.apply(flat, targets, temperature, reduction, impl, lead,
                                     bool(inplace_backward))
    # No autograd: the loss only, no [N, V] gradient buffer and no gradient pass.
    flat = flat.detach()
    scale = _grad_scale(reduction, int(targets.row_mask.sum()))
    rows = impl.topd_kl(flat, targets, temperature, scale, None)
    _check_rows(rows, targets, "student_logits", lambda p: flat[p], temperature, rows.dtype)
    return _reduce(rows, reduction, scale, lead)


# ------------------------------------------------------------------ fused linear + topd KL

_FUSED_NAME = "hidden @ weight.T (the student logits)"


def _fused_sweep(hidden, weight, bias, targets, temperature, impl, step, scale, row_scale, needs):
    """One sweep over the unmasked rows: loss per row and, if asked, the gradients.

    One [step, V] logits buffer serves every chunk (no second chunk alive while the next one
    is computed, no fresh pages per chunk): the chunk's logits are written into it, overwritten
    in place with their gradient, then turned into grad_hidden (dZ W, straight into its rows
    when no row is masked) and, only when the head is trainable, accumulated into grad_weight
    (dZ^T X in place, in the compute dtype: float32, or float64 for float64 inputs).
    """
    need_h, need_w, need_b = needs
    n = hidden.shape[0]
    acc = compute_dtype(hidden.dtype)
    dense = bool(targets.row_mask.all())  # every row unmasked: chunks are plain slices
    rows = None if dense else targets.row_mask.nonzero().squeeze(1)
    total = n if dense else rows.numel()
    loss = torch.zeros(n, dtype=acc, device=hidden.device)
    any_grad = need_h or need_w or need_b
    grad_h = None
    if need_h:
        make = torch.empty if dense else torch.zeros
        grad_h = make(hidden.shape, dtype=hidden.dtype, device=hidden.device)
    grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
    grad_b = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if need_b else None
    w_inplace = need_w and weight.dtype == acc  # addmm_ straight into grad_w
    step = max(1, min(step, total))
    buf = torch.empty(step, weight.shape[0], dtype=hidden.dtype, device=hidden.device) if total else None
    w_t = weight.t()
    for s in range(0, total, step):
        e = min(total, s + step)
        r = torch.arange(s, e, device=hidden.device) if dense else rows[s:e]
        x = hidden[s:e] if dense else hidden.index_select(0, r)
        z = buf[: e - s]
        if bias is None:
            torch.mm(x, w_t, out=z)
        else:
            torch.addmm(bias, x, w_t, out=z)
        part = targets if (dense and s == 0 and e == total) else targets.rows(r)
        rows_loss = impl.topd_kl(z, part, temperature, scale, z if any_grad else None)
        if dense:
            loss[s:e] = rows_loss
        else:
            loss.index_copy_(0, r, rows_loss)
        if not any_grad:
            continue
        if row_scale is not None:
            z.mul_(row_scale.index_select(0, r).unsqueeze(1).to(z.dtype))
        if need_h:
            if dense:
                torch.mm(z, weight, out=grad_h[s:e])
            else:
                grad_h.index_copy_(0, r, z @ weight)
        if need_w:
            if w_inplace:
                grad_w.addmm_(z.t(), x)
            else:
                grad_w.add_(z.t() @ x)
        if need_b:
            grad_b.add_(z.sum(0, dtype=acc))
    return loss, grad_h, grad_w, grad_b


def _fused_check(loss, targets, hidden, weight, bias, temperature):
    def logits_of_row(p):
        return F.linear(hidden[p : p + 1], weight, bias)[0]

    _check_rows(loss, targets, _FUSED_NAME, logits_of_row, temperature, loss.dtype)


class _FusedLinearTopDKLFunction(torch.autograd.Function):
    """Gradients computed in the forward sweep (one logits GEMM and one dZ W GEMM, as naive
    autograd), except for reduction="none" with a trainable head or bias: there the
    per-position grad_output must scale dZ before dZ^T X, so backward recomputes the sweep.
    (For grad_hidden alone a per-row scale commutes with dZ W and is applied in backward.)"""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, reduction, impl, step, lead, needs):
        count = int(targets.row_mask.sum())
        scale = _grad_scale(reduction, count)
        eager = reduction != "none" or not (needs[1] or needs[2])
        hidden_d = hidden.detach()
        weight_d = weight.detach()
        bias_d = None if bias is None else bias.detach()
        loss, gh, gw, gb = _fused_sweep(
            hidden_d, weight_d, bias_d, targets, temperature, impl, step, scale, None,
            needs if eager else (False, False, False),
        )
        _fused_check(loss, targets, hidden_d, weight_d, bias_d, temperature)
        ctx.reduction = reduction
        ctx.eager = eager
        ctx.needs = needs
        ctx.param_dtype = weight.dtype
        if eager:
            # saved tensors (not ctx attributes): released after a backward without
            # retain_graph, so AccumulateGrad can take them over without a copy
            ctx.save_for_backward(gh, gw, gb)
        else:
            ctx.recompute = (hidden_d, weight_d, bias_d, targets, temperature, impl, step)
        return _reduce(loss, reduction, scale, lead)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        if ctx.reduction == "none" and ctx.eager:
            gh, gw, gb = ctx.saved_tensors  # frozen head: gw, gb are None
            gh = _scaled(gh, grad_output.reshape(-1, 1))
        elif ctx.reduction == "none":
            hidden, weight, bias, targets, temperature, impl, step = ctx.recompute
            _, gh, gw, gb = _fused_sweep(
                hidden, weight, bias, targets, temperature, impl, step, 1.0,
                grad_output.reshape(-1), ctx.needs,
            )
        else:
            gh, gw, gb = ctx.saved_tensors
            if not _is_one(grad_output):
                gh, gw, gb = (_scaled(t, grad_output) for t in (gh, gw, gb))
        gw = None if gw is None else gw.to(ctx.param_dtype)
        gb = None if gb is None else gb.to(ctx.param_dtype)
        return gh, gw, gb, None, None, None, None, None, None, None


def fused_linear_topd_kl_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    teacher_indices: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    tail: str = "renorm",
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
    labels: torch.Tensor | None = None,
    ce_weight: float = 0.0,
    backend: str = "auto",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """``topd_kl_loss(hidden @ weight.T + bias, ...)`` without materialising the logits.

    hidden: (..., H), weight: (V, H). Differentiable with respect to ``hidden``, and to
    ``weight`` / ``bias`` only when they require grad: a frozen head (QLoRA) costs no V x H
    gradient buffer and no weight-gradient FLOPs, and under ``torch.no_grad`` nothing but
    the loss is computed. Masked positions are skipped entirely. The CE term is normalised
    as in ``topd_kl_loss`` (over unmasked positions, not over labelled ones).
    """
    vocab, width = _check_linear(hidden, weight, bias)
    reduction = _check_reduction(reduction)
    temperature = _check_temperature(temperature)
    lead = hidden.shape[:-1]
    targets = _targets_for(
        lead, vocab, hidden.device, hidden.dtype, teacher_indices, teacher_logprobs,
        tail=tail, mask=mask, labels=labels, ce_weight=ce_weight,
    )
    impl = resolve_backend(backend, hidden.device)
    flat = hidden.reshape(-1, width)
    step = _chunk_rows(chunk_size, int(targets.row_mask.sum()), vocab, hidden.dtype, hidden.device)
    needs = tuple(_wants_grad(t) for t in (hidden, weight, bias))
    if any(needs):
        return _FusedLinearTopDKLFunction.apply(
            flat, weight, bias, targets, temperature, reduction, impl, step, lead, needs
        )
    # No autograd: one loss-only sweep, no gradient buffers.
    flat, weight = flat.detach(), weight.detach()
    bias = None if bias is None else bias.detach()
    scale = _grad_scale(reduction, int(targets.row_mask.sum()))
    loss, _, _, _ = _fused_sweep(flat, weight, bias, targets, temperature, impl, step, scale,
                                 None, (False, False, False))
    _fused_check(loss, targets, flat, weight, bias, temperature)
    return _reduce(loss, reduction, scale, lead)
