"""Loss micro-benchmarks: ``python -m benchmarks.loss [--quick] [--csv PATH]``.

For select_topd, topd_kl (forward + backward) and fused-linear topd_kl (forward + backward),
per backend, at V=151,936 and d=5: median time over repeated runs, peak memory above the
inputs, and the ratio against a naive torch eager implementation measured in the same run
(implementations are interleaved round-robin so machine noise hits all of them alike).
The topd_kl case also times ``torch.compile`` of the naive code and the memory floor, one
``out.copy_(logits)`` of the N x V logits into a preallocated buffer (the kernel must read
the logits and write an N x V gradient), and reports every row as a multiple of it; and
``logits.clone()`` alone, the part of the "incl. logits.clone()" rows spent before the loss.
On CPU, ``--thp`` reruns the benchmark with torch's transparent-huge-page allocation
(``THP_MEM_ALLOC_ENABLE=1``): a fresh N x V tensor then costs one fault per 2 MiB, not per
4 KiB, which is most of what a fresh tensor costs on the VMs measured (benchmarks/README.md).
The fused-linear case runs with the lm_head frozen and trainable (``--heads``).
On CUDA it adds Liger-Kernel's fused linear JSD when installed and the share of the 2-pass
GEMM bound (4*N*H*V FLOP). Triton under the CPU interpreter is not timed (meaningless).
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

import tsubasa_fast as tf

VOCAB = 151_936
D = 5
COPY_FLOOR = "copy floor: out.copy_(logits)"
CLONE_ALONE = "logits.clone() alone"


# ------------------------------------------------------------------------------ measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _rss_peak_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _rss_now_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def _mmap_threshold(nbytes: int) -> None:
    """glibc serves allocations above nbytes with mmap and returns them to the OS on free.

    While measuring peak memory it is set to 64 KiB so RSS tracks live tensors (freed heap
    memory would otherwise stay resident and hide later peaks); while timing it is set to
    32 MiB, glibc's own steady state, so allocation costs stay realistic.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_MMAP_THRESHOLD, nbytes)
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc mallopt parameters
_reuse = {"on": False}


def _reuse_freed_pages(on: bool) -> None:
    """``--reuse-pages``: glibc keeps freed memory in its heap (no mmap, no trimming).

    An experiment, not a library setting: a fresh N x V tensor then costs no first-touch
    page faults, but only once the heap has grown to several times the tensor. torch
    allocates with posix_memalign, whose request is padded past the size of a freed chunk
    of the same shape, and the small allocations between two freed chunks keep them from
    merging (a 96 MiB alloc/free loop grew the heap by 96 MiB a step for 8 steps before the
    first reuse). See benchmarks/README.md, "Loss kernels".
    """
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    for param, value in ((_M_MMAP_MAX, 0 if on else 65536),
                         (_M_TRIM_THRESHOLD, -1 if on else 128 * 1024)):
        if libc.mallopt(param, value) != 1:
            raise RuntimeError(f"mallopt({param}, {value}) failed")


def _reset_peak(device: torch.device) -> float:
    """Resets the peak counter; returns the baseline (MiB) the peak is measured above."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS
    except OSError:
        pass
    return _rss_now_mib()


def _peak(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return _rss_peak_mib()


@dataclass
class Impl:
    name: str
    fn: Callable[[], object]
    times: list = field(default_factory=list)
    peak_mib: float = float("nan")


def measure(impls: list[Impl], device: torch.device, repeats: int, warmup: int = 1) -> None:
    reuse = _reuse["on"] and device.type == "cpu"
    if device.type == "cpu":
        if reuse:  # the peak needs freed memory unmapped; timing runs in the mode asked for
            _reuse_freed_pages(False)
        _mmap_threshold(64 << 10)
    for impl in impls:  # warm-up, and one run for the peak-memory figure
        for _ in range(warmup):
            impl.fn()
        # the peak includes the gradient workspace: it is allocated inside the measured run
        tf.loss.grad_workspace.release()
        base = _reset_peak(device)
        impl.fn()
        _sync(device)
        impl.peak_mib = _peak(device) - base
    if device.type == "cpu":
        _mmap_threshold(32 << 20)
        if reuse:
            _reuse_freed_pages(True)
        for impl in impls:
            impl.fn()
    for _ in range(repeats):
        for impl in impls:
            _sync(device)
            t0 = time.perf_counter()
            impl.fn()
            _sync(device)
            impl.times.append(time.perf_counter() - t0)


# ------------------------------------------------------------------------------ baselines


def naive_select(logits, d, temperature=1.0):
    lp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return lp.topk(d, dim=-1)


def naive_topd_kl(logits, idx, lp):
    """Full log-softmax + gather + KL through autograd (what most libraries do)."""
    log_q = torch.log_softmax(logits.float(), dim=-1).gather(-1, idx.long())
    p = torch.softmax(lp, dim=-1)
    return (p * (p.log() - log_q)).sum(-1).mean()


# ------------------------------------------------------------------------------ cases


def _inputs(n, vocab, device, dtype, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    logits = torch.randn(n, vocab, generator=g).to(device=device, dtype=dtype)
    top = tf.select_topd(logits + 0.5, D, backend="torch" if device.type == "cpu" else "auto")
    return logits, top.indices, top.logprobs


def bench_select(n, backends, device, dtype, repeats):
    logits, _, _ = _inputs(n, VOCAB, device, dtype)
    impls = [Impl("naive torch", lambda: naive_select(logits, D))]
    impls += [Impl(b, lambda b=b: tf.select_topd(logits, D, backend=b)) for b in backends]
    measure(impls, device, repeats)
    return impls


def bench_topd_kl(n, backends, device, dtype, repeats, compile_naive=True):
    logits, idx, lp = _inputs(n, VOCAB, device, dtype)
    x = logits.clone().requires_grad_()
    out = torch.empty_like(logits)
    out.copy_(logits)  # touch every page once: the floor is the copy, not page faults

    # Each run drops its gradient at the end, so the next run's peak starts from the inputs.
    def naive():
        naive_topd_kl(x, idx, lp).backward()
        x.grad = None

    compiled = torch.compile(naive_topd_kl) if compile_naive else None

    def naive_compiled():
        compiled(x, idx, lp).backward()
        x.grad = None

    def ours(b):
        tf.topd_kl_loss(x, idx, lp, backend=b).backward()
        x.grad = None

    def ours_from_clone(b, inplace):  # as a training step sees it: fresh logits (a temporary)
        tf.topd_kl_loss(x.clone(), idx, lp, backend=b, inplace_backward=inplace).backward()
        x.grad = None

    impls = [Impl("naive torch", naive)]
    if compiled is not None:
        impls.append(Impl("torch.compile(naive)", naive_compiled))
    impls.append(Impl(COPY_FLOOR, lambda: out.copy_(logits)))
    # what the "incl. logits.clone()" rows pay before the loss runs: a fresh N x V buffer
    # (first-touch page faults) and the copy
    impls.append(Impl(CLONE_ALONE, lambda: logits.clone()))
    impls += [Impl(b, lambda b=b: ours(b)) for b in backends]
    for b in backends:
        if b != "torch":
            impls.append(Impl(f"{b} incl. logits.clone()", lambda b=b: ours_from_clone(b, False)))
            impls.append(Impl(f"{b} inplace_backward incl. logits.clone()",
                              lambda b=b: ours_from_clone(b, True)))
    measure(impls, device, repeats, warmup=2 if compiled is not None else 1)
    return impls


def bench_fused_linear(n, hdim, backends, device, dtype, repeats, train_head=False):
    g = torch.Generator(device="cpu").manual_seed(1)
    h = torch.randn(n, hdim, generator=g).to(device=device, dtype=dtype).requires_grad_()
    w = (torch.randn(VOCAB, hdim, generator=g) / hdim**0.5).to(device=device, dtype=dtype)
    w.requires_grad_(train_head)
    with torch.no_grad():
        top = tf.fused_linear_select_topd(h.detach() * 1.1, w.detach(), D)
    idx, lp = top.indices, top.logprobs

    def naive():
        naive_topd_kl(h @ w.T, idx, lp).backward()
        h.grad = w.grad = None

    def ours(b):
        tf.fused_linear_topd_kl_loss(h, w, idx, lp, backend=b).backward()
        h.grad = w.grad = None

    impls = [Impl("naive torch", naive)] + [Impl(b, lambda b=b: ours(b)) for b in backends]
    liger = _liger_impl(h, w, idx, lp) if device.type == "cuda" else None
    if liger is not None:
        impls.append(liger)
    measure(impls, device, repeats)
    return impls


def _liger_impl(h, w, idx, lp):
    """Liger's fused linear JSD (beta=0: forward KL) against a live teacher head, if installed."""
    try:
        from liger_kernel.transformers import LigerFusedLinearJSD
    except ImportError:
        return None
    jsd = LigerFusedLinearJSD(jsd_beta=0.0)
    t_h = h.detach()
    t_w = w.detach()

    def run():
        jsd(h, w, t_h, t_w).backward()
        h.grad = None

    return Impl("liger fused linear JSD", run)


# ------------------------------------------------------------------------------ reporting


def _rows(op, shape, impls, flop=None, device_name=""):
    base = statistics.median(impls[0].times)
    floor = next((statistics.median(i.times) for i in impls if i.name == COPY_FLOOR), None)
    out = []
    for impl in impls:
        med = statistics.median(impl.times)
        row = {
            "op": op,
            "shape": shape,
            "impl": impl.name,
            "median_ms": round(med * 1e3, 2),
            "max_ms": round(max(impl.times) * 1e3, 2),  # stalls (page faults) show up here
            "peak_mib": round(impl.peak_mib, 1),
            "speedup_vs_naive": round(base / med, 2),
            # a ratio over a peak of a few MiB measures page-granular noise, not the kernel
            "memory_ratio_naive_over_impl": (round(impls[0].peak_mib / impl.peak_mib, 1)
                                             if impl.peak_mib >= 2 else "-"),
            "device": device_name,
        }
        if floor is not None:
            row["x_copy_floor"] = round(med / floor, 2)
        if flop is not None:
            row["pct_of_2pass_bound"] = round(100 * flop / med / _peak_flops(), 1)
        out.append(row)
    return out


def _peak_flops() -> float:
    """Dense bf16 tensor-core peak of the current GPU (FLOP/s), for the 2-pass bound.
    TSUBASA_PEAK_TFLOPS overrides the table (and covers GPUs not in it)."""
    if os.environ.get("TSUBASA_PEAK_TFLOPS"):
        return float(os.environ["TSUBASA_PEAK_TFLOPS"]) * 1e12
    name = torch.cuda.get_device_name()
    for key, tflops in (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("4090", 165e12)):
        if key in name:
            return tflops
    return float(os.environ.get("TSUBASA_PEAK_TFLOPS", "100")) * 1e12


def _print_table(rows):
    cols = ["op", "shape", "impl", "median_ms", "max_ms", "peak_mib", "speedup_vs_naive",
            "memory_ratio_naive_over_impl", "x_copy_floor"]
    if any("pct_of_2pass_bound" in r for r in rows):
        cols.append("pct_of_2pass_bound")
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in cols))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                    help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="small shapes, for a smoke run")
    ap.add_argument("--only", choices=["select", "topd_kl", "fused"], action="append")
    ap.add_argument("--backends", nargs="+", default=None,
                    help="backends to time (default: all that run here; the torch fallback is "
                         "left out of the fused-linear case unless named, it is slow there)")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile(naive)")
    ap.add_argument("--ns", type=int, nargs="+", default=None, help="token counts for select/topd_kl")
    ap.add_argument("--heads", nargs="+", choices=["frozen", "trainable"], default=["frozen", "trainable"],
                    help="fused-linear case: lm_head frozen (QLoRA) and/or trainable")
    ap.add_argument("--reuse-pages", action="store_true",
                    help="CPU experiment: glibc keeps freed memory in its heap while timing, so "
                         "fresh tensors (eventually) reuse faulted-in pages; see _reuse_freed_pages")
    ap.add_argument("--thp", action="store_true",
                    help="CPU: rerun with torch's huge-page allocation (THP_MEM_ALLOC_ENABLE=1), "
                         "so fresh N x V tensors fault per 2 MiB instead of per 4 KiB")
    ap.add_argument("--csv", default="benchmarks/results/loss.csv")
    args = ap.parse_args(argv)
    if args.thp and os.environ.get("THP_MEM_ALLOC_ENABLE") != "1":
        # torch reads the variable once, at its first allocation: it needs a fresh process
        os.environ["THP_MEM_ALLOC_ENABLE"] = "1"
        rest = list(sys.argv[1:] if argv is None else argv)
        os.execv(sys.executable, [sys.executable, "-m", "benchmarks.loss", *rest])
    _reuse["on"] = args.reuse_pages
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    backends = args.backends or [b for b in tf.available_backends(device)
                                 if not (b == "triton" and device.type == "cpu")]
    fused_backends = args.backends or [b for b in backends if b != "torch"] or backends
    dev_name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU x{torch.get_num_threads()}"
    if device.type == "cpu":
        pages = "2 MiB (THP_MEM_ALLOC_ENABLE=1)" if os.environ.get("THP_MEM_ALLOC_ENABLE") == "1" else "4 KiB"
        dev_name += f", {pages} pages"
    print(f"device: {dev_name}, dtype: {dtype}, backends: {backends}, V={VOCAB}, d={D}, "
          f"medians of {args.repeats} runs, freed pages {'reused' if args.reuse_pages else 'unmapped (glibc default)'}")
    if args.quick:
        ns, fused_shapes = [128], [(256, 256)]
    elif device.type == "cuda":
        ns, fused_shapes = [1024, 4096, 8192], [(4096, 1024), (8192, 2560), (16384, 4096)]
    else:
        ns, fused_shapes = [256, 1024], [(2048, 1024)]
    if args.ns:
        ns = args.ns
    only = set(args.only or ["select", "topd_kl", "fused"])
    rows = []
    for n in ns:
        if "select" in only:
            rows += _rows("select_topd", f"N={n}", bench_select(n, backends, device, dtype, args.repeats), device_name=dev_name)
        if "topd_kl" in only:
            rows += _rows("topd_kl fwd+bwd", f"N={n}", bench_topd_kl(n, backends, device, dtype, args.repeats, not args.no_compile), device_name=dev_name)
    if "fused" in only:
        for n, hdim in fused_shapes:
            for head in args.heads:
                train = head == "trainable"
                # GEMM FLOP: logits and dZ W, plus dZ^T X when the head trains
                flop = (6 if train else 4) * n * hdim * VOCAB if device.type == "cuda" else None
                impls = bench_fused_linear(n, hdim, fused_backends, device, dtype, args.repeats, train)
                rows += _rows(f"fused_linear topd_kl fwd+bwd ({head} head)", f"N={n} H={hdim}",
                              impls, flop, dev_name)
    _print_table(rows)
    if device.type == "cpu":  # what --reuse-pages costs: the heap it keeps
        print(f"process RSS at the end: {_rss_now_mib():.0f} MiB, peak {_rss_peak_mib():.0f} MiB "
              "(since the last peak reset)")
    if args.csv:
        os.makedirs(os.path.dirname(args.csv) or ".", exist_ok=True)
        keys = sorted({k for r in rows for k in r}, key=lambda k: list(rows[0]).index(k) if k in rows[0] else 99)
        with open(args.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
