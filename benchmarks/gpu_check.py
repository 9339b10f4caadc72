"""One prepared GPU check: ``python -m benchmarks.gpu_check [--peak-tflops X] [--csv PATH]``.

On a CUDA machine, in a few minutes and without any download:

1. correctness: every Triton kernel is compiled for real (each constexpr variant: tails,
   CE on/off, gradient on/off, d in {1, 5, 64}, fused-linear paths) and checked against the
   float64 reference at V = 151,936 with float32 and bfloat16 inputs;
2. speed: topd_kl from logits at N in {1,024, 4,096, 8,192} and the fused-linear loss
   (frozen head) at N in {1,024, 4,096, 8,192} x H in {1,024, 2,560}, d = 5, forward +
   backward, against naive torch and Liger-Kernel's fused linear JSD when it is importable,
   with the share of the 2-pass GEMM bound (4 N H V FLOP at the device's bf16 dense peak:
   989 TFLOP/s for H100/H200; ``--peak-tflops`` or TSUBASA_PEAK_TFLOPS overrides it);
3. a 4-bit QLoRA training step of a tiny random Qwen3 (real Qwen3 tokenizer and
   vocabulary, built in-process) with SDPA, and with FlashAttention 2 when importable.

It prints one table and writes it as CSV; the exit status is 1 when a check failed.
Without CUDA it stops at once with a clear message (the functions below also run on CPU
with small shapes, which is how ``make test`` checks them: tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import math
import os
import statistics
import sys
import tempfile
import time
from unittest import mock

import torch

import tsubasa_fast as tf
from tsubasa_fast.ops import reference

from . import loss as bench

COLUMNS = ["section", "name", "shape", "dtype", "status", "loss_err", "grad_err", "median_ms",
           "peak_mib", "speedup_vs_naive", "pct_of_2pass_bound", "note"]
QWEN_V = 151_936
# float32: the kernels sum 151,936 exps in fp32; bfloat16: the gradient is stored in bf16,
# and the fused path also rounds its logits (a bf16 GEMM) before the loss sees them.
TOLERANCE = {torch.float32: (1e-4, 1e-3), torch.bfloat16: (1e-3, 2e-2)}
FUSED_TOLERANCE = {torch.float32: (1e-4, 1e-3), torch.bfloat16: (3e-2, 5e-2)}


class NoCudaError(RuntimeError):
    """The GPU check needs a CUDA device."""


def _row(section, name, shape="", dtype="", status="ok", **kw) -> dict:
    r = {c: "" for c in COLUMNS}
    r.update(section=section, name=name, shape=shape, dtype=str(dtype).replace("torch.", ""),
             status=status, **kw)
    return r


def _rel(got, want) -> float:
    return float((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-30))


# ------------------------------------------------------------------------ correctness


def _case(n, vocab, d, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(n, vocab, generator=g, dtype=torch.float64) * 3
    student = (teacher + torch.randn(n, vocab, generator=g, dtype=torch.float64)).to(dtype)
    idx, lp = reference.select_topd(teacher, d)
    if d > 1:
        idx[0, 1] = idx[0, 0]  # a duplicate teacher index
    return student.to(device), idx.to(device), lp.float().to(device)


def _reference(x, idx, lp, mask, **kw):
    xr = x.detach().double().requires_grad_()
    rows = reference.topd_kl(xr, idx, lp.double(), **kw) * mask
    loss = rows.sum() / mask.sum().clamp_min(1)
    loss.backward()
    return loss.detach(), xr.grad


def check_kernels(device, backend="triton", vocab=QWEN_V, n=6, dtypes=(torch.float32, torch.bfloat16),
                  ds=(1, 5, 64), fused_n=37) -> list[dict]:
    """Every kernel variant against the float64 reference; one row per check."""
    device = torch.device(device)
    rows = []
    shape = f"N={n} V={vocab}"
    for dtype in dtypes:
        loss_tol, grad_tol = TOLERANCE[dtype]
        for d in ds:
            x, _, _ = _case(n, vocab, d, dtype, device, seed=d)
            got = tf.select_topd(x, d, temperature=1.3, backend=backend)
            want_idx, want_lp = reference.select_topd(x.double(), d, 1.3)
            same = torch.equal(got.indices.long(), want_idx)
            err = float((got.logprobs.double() - want_lp).abs().max())
            rows.append(_row("correctness", f"select_topd d={d}", shape, dtype,
                             "ok" if same and err <= 1e-5 else "FAIL", loss_err=f"{err:.2e}",
                             note="" if same else "indices differ"))
        for tail in reference.TAIL_MODES:
            for ce in (0.0, 0.5):
                for grad in (True, False):
                    d = 64 if (tail == "renorm" and ce and grad) else 5
                    x, idx, lp = _case(n, vocab, d, dtype, device, seed=7)
                    mask = torch.ones(n, dtype=torch.bool, device=device)
                    mask[-1] = False
                    labels = idx[:, 0].clone()
                    labels[1] = -100
                    labels[2] = (idx[2, 0] + 1) % vocab  # a label outside the teacher set
                    kw = dict(tail=tail, temperature=0.9, labels=labels, ce_weight=ce)
                    xs = x.clone().requires_grad_(grad)
                    loss = tf.topd_kl_loss(xs, idx, lp, mask=mask, backend=backend, **kw)
                    want, wgrad = _reference(x, idx, lp, mask, **kw)
                    lerr = abs(float(loss.detach()) - float(want)) / abs(float(want))
                    gerr = math.nan
                    if grad:
                        loss.backward()
                        gerr = _rel(xs.grad, wgrad)
                    ok = lerr <= loss_tol and (not grad or gerr <= grad_tol)
                    rows.append(_row("correctness", f"topd_kl tail={tail} ce={ce} grad={grad} d={d}",
                                     shape, dtype, "ok" if ok else "FAIL", loss_err=f"{lerr:.2e}",
                                     grad_err="" if not grad else f"{gerr:.2e}"))
        rows += _check_fused(device, backend, vocab, dtype, n=fused_n)
    return rows


def _check_fused(device, backend, vocab, dtype, n=37, hdim=64) -> list[dict]:
    loss_tol, grad_tol = FUSED_TOLERANCE[dtype]
    g = torch.Generator().manual_seed(3)
    h = torch.randn(n, hdim, generator=g, dtype=torch.float64)
    w = torch.randn(vocab, hdim, generator=g, dtype=torch.float64) / 3
    b = torch.randn(vocab, generator=g, dtype=torch.float64) / 3
    teacher = (h @ w.T + b) * 1.2 + torch.randn(n, vocab, generator=g, dtype=torch.float64)
    idx, lp = reference.select_topd(teacher, 5)
    idx, lp = idx.to(device), lp.float().to(device)
    rows = []
    shape = f"N={n} H={hdim} V={vocab}"
    hd, wd, bd = (t.to(device=device, dtype=dtype) for t in (h, w, b))
    chunk = n // 3 + 1  # three chunks
    top = tf.fused_linear_select_topd(hd, wd, 5, bias=bd, backend=backend, chunk_size=chunk)
    want_idx, _ = reference.select_topd(hd.double() @ wd.double().T + bd.double(), 5)
    agree = float((top.indices.long() == want_idx).float().mean())
    # bf16 GEMM rounding may swap near-ties between chunks; fp32 must agree exactly
    ok = agree == 1.0 if dtype == torch.float32 else agree >= 0.95
    rows.append(_row("correctness", "fused_linear_select_topd", shape, dtype, "ok" if ok else "FAIL",
                     note=f"{agree:.1%} of indices equal"))
    for reduction in ("mean", "none"):
        hs, ws, bs = (t.clone().requires_grad_() for t in (hd, wd, bd))
        loss = tf.fused_linear_topd_kl_loss(hs, ws, idx, lp, bias=bs, reduction=reduction,
                                            tail="bucket", backend=backend, chunk_size=chunk)
        loss.sum().backward()
        hr, wr, br = (t.double().requires_grad_() for t in (hd, wd, bd))
        want = reference.topd_kl(hr @ wr.T + br, idx, lp.double(), tail="bucket")
        want = want.mean() if reduction == "mean" else want
        want.sum().backward()
        lerr = _rel(loss.detach(), want.detach())
        gerr = max(_rel(hs.grad, hr.grad), _rel(ws.grad, wr.grad), _rel(bs.grad, br.grad))
        rows.append(_row("correctness", f"fused_linear_topd_kl reduction={reduction} trainable head",
                         shape, dtype, "ok" if lerr <= loss_tol and gerr <= grad_tol else "FAIL",
                         loss_err=f"{lerr:.2e}", grad_err=f"{gerr:.2e}"))
    return rows


# ------------------------------------------------------------------------ speed


def peak_flops(override_tflops: float | None = None) -> float:
    """bf16 dense peak in FLOP/s: the override, else TSUBASA_PEAK_TFLOPS, else the table in
    benchmarks/loss.py for the current GPU."""
    if override_tflops:
        return override_tflops * 1e12
    return bench._peak_flops()


def _speed_rows(section, name, shape, dtype, impls, flop=None, peak=None) -> list[dict]:
    base = statistics.median(impls[0].times)
    out = []
    for impl in impls:
        med = statistics.median(impl.times)
        r = _row(section, f"{name}: {impl.name}", shape, dtype, median_ms=round(med * 1e3, 3),
                 peak_mib=round(impl.peak_mib, 1), speedup_vs_naive=round(base / med, 2))
        if flop is not None and peak:
            r["pct_of_2pass_bound"] = round(100 * flop / med / peak, 1)
        out.append(r)
    liger = next((i for i in impls if i.name.startswith("liger")), None)
    if liger is not None:
        ref = statistics.median(liger.times)
        for r, impl in zip(out, impls):
            if not impl.name.startswith(("naive", "liger")):
                r["note"] = f"{ref / statistics.median(impl.times):.2f}x faster than liger"
    return out


def time_kernels(device, backend="triton", ns=(1024, 4096, 8192), hdims=(1024, 2560),
                 dtype=torch.bfloat16, repeats=5, peak=None) -> list[dict]:
    """topd_kl from logits and the fused-linear loss (frozen head), fwd+bwd, vs naive/Liger."""
    device = torch.device(device)
    rows = []
    for n in ns:
        impls = bench.bench_topd_kl(n, [backend], device, dtype, repeats, compile_naive=False)
        rows += _speed_rows("speed", "topd_kl fwd+bwd", f"N={n} V={bench.VOCAB}", dtype, impls)
    for n in ns:
        for hdim in hdims:
            impls = bench.bench_fused_linear(n, hdim, [backend], device, dtype, repeats)
            rows += _speed_rows("speed", "fused_linear topd_kl fwd+bwd (frozen head)",
                                f"N={n} H={hdim} V={bench.VOCAB}", dtype, impls,
                                flop=4 * n * hdim * bench.VOCAB, peak=peak)
    return rows


# ------------------------------------------------------------------------ QLoRA step


def make_tiny_qwen3(path, seed=0) -> str:
    """A random 2-layer Qwen3 with the real tokenizer and vocabulary, saved to `path`."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from tsubasa_fast.models import QWEN3_VOCAB_SIZE, load_qwen3_tokenizer

    cfg = Qwen3Config(vocab_size=QWEN3_VOCAB_SIZE, hidden_size=128, intermediate_size=256,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                      tie_word_embeddings=True, max_position_embeddings=1024)
    torch.manual_seed(seed)
    Qwen3ForCausalLM(cfg).save_pretrained(path)
    load_qwen3_tokenizer().save_pretrained(path)
    return str(path)


def attention_backends(device) -> list[str]:
    device = torch.device(device)
    found = device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None
    return ["sdpa"] + (["flash_attention_2"] if found else [])


def qlora_step(device, model_dir, attn="sdpa", batch=2, seq=128, answer=32, repeats=3) -> dict:
    """One 4-bit QLoRA step (teacher = base with the adapter off, fused top-d KL on the
    answer rows); checks a finite loss and a LoRA update, and times the step."""
    from tsubasa_fast.distill import student as student_mod

    device = torch.device(device)
    with mock.patch.object(student_mod, "flash_attention_available", lambda: attn == "flash_attention_2"):
        st = student_mod.Student(student_mod.StudentConfig(model=model_dir, load_in_4bit=True,
                                                           device=str(device)))
    if st.attn_implementation != attn:
        return _row("qlora", f"4-bit QLoRA step, {attn}", status="FAIL",
                    note=f"the student loaded {st.attn_implementation}")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 151_643, (batch, seq), generator=g).to(device)
    mask = torch.ones_like(ids)
    params = st.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=1e-3)
    before = [p.detach().clone() for p in params]

    def step():
        with st.teacher():
            th = st.hidden_states(ids, mask)[:, -answer - 1:-1]
            top = tf.fused_linear_select_topd(th, st.head_weight, 5)
        h = st.hidden_states(ids, mask)[:, -answer - 1:-1]
        loss = tf.fused_linear_topd_kl_loss(h, st.head_weight, top.indices, top.logprobs)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    loss = step()  # warm-up (and the checked step)
    moved = any(not torch.equal(b, p.detach()) for b, p in zip(before, params))
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else math.nan
    ok = bool(torch.isfinite(loss)) and moved
    return _row("qlora", f"4-bit QLoRA step, {attn}", f"B={batch} T={seq} answer={answer}",
                "bfloat16" if device.type == "cuda" else "float32", "ok" if ok else "FAIL",
                median_ms=round(statistics.median(times) * 1e3, 2), peak_mib=round(peak, 1),
                note=f"loss {float(loss):.4f}; LoRA weights {'updated' if moved else 'NOT updated'}")


# ------------------------------------------------------------------------ report


def format_table(rows: list[dict]) -> str:
    cols = [c for c in COLUMNS if any(str(r.get(c, "")) for r in rows)]
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def write_csv(rows: list[dict], path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def require_cuda() -> torch.device:
    if not torch.cuda.is_available():
        raise NoCudaError(
            "benchmarks.gpu_check needs a CUDA GPU (torch.cuda.is_available() is False); on "
            "CPU the kernels are checked by make test under TRITON_INTERPRET=1"
        )
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise NoCudaError("unset TRITON_INTERPRET: the check compiles the Triton kernels for real")
    return torch.device("cuda")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="bf16 dense peak of this GPU in TFLOP/s (default: known table, e.g. 989 for H100/H200)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--csv", default="benchmarks/results/gpu_check.csv")
    ap.add_argument("--skip", choices=["correctness", "speed", "qlora"], action="append", default=[])
    args = ap.parse_args(argv)
    try:
        device = require_cuda()
    except NoCudaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    peak = peak_flops(args.peak_tflops)
    name = torch.cuda.get_device_name()
    print(f"device: {name}, bf16 peak used for the bound: {peak / 1e12:.0f} TFLOP/s, "
          f"torch {torch.__version__}", flush=True)
    rows = []
    t0 = time.perf_counter()
    if "correctness" not in args.skip:
        rows += check_kernels(device)
        print(f"correctness done in {time.perf_counter() - t0:.0f} s", flush=True)
    if "speed" not in args.skip:
        rows += time_kernels(device, repeats=args.repeats, peak=peak)
        print(f"speed done at {time.perf_counter() - t0:.0f} s", flush=True)
    if "qlora" not in args.skip:
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = make_tiny_qwen3(os.path.join(tmp, "tiny-qwen3"))
            for attn in attention_backends(device):
                try:
                    rows.append(qlora_step(device, model_dir, attn))
                except Exception as exc:  # noqa: BLE001 - report it in the table, go on
                    rows.append(_row("qlora", f"4-bit QLoRA step, {attn}", status="FAIL",
                                     note=f"{type(exc).__name__}: {exc}"[:200]))
    for r in rows:
        r.setdefault("note", "")
    print(format_table(rows))
    write_csv(rows, args.csv)
    failed = [r for r in rows if r["status"] != "ok"]
    print(f"device {name}; {len(rows)} rows, {len(failed)} failed; {time.perf_counter() - t0:.0f} s; "
          f"wrote {args.csv}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
