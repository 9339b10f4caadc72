"""The C++ topd_kl op alone: ``python -m benchmarks.cpu_kernel [--threads 1 2] [--n 1024]``.

No autograd, no checks around it: the forward pass only, the gradient into a reused buffer,
in place and into a fresh buffer, and the copy floor (``out.copy_(logits)``), interleaved in
one process per thread count, medians of ``--repeats``. For kernel work, where the
``benchmarks.loss`` rows mix the kernel with the allocator. V = 151,936, d = 5, fp32.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tsubasa_fast.ops import cpu, targets

from .loss import VOCAB, _inputs


def run(n: int, threads: int, repeats: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    logits, idx, lp = _inputs(n, VOCAB, torch.device("cpu"), torch.float32)
    x = logits.clone()
    out = torch.empty_like(logits)
    grad = torch.empty_like(logits)
    out.copy_(logits)  # every page touched once: the figures are the kernel's, not faults
    grad.copy_(logits)
    tg = targets.prepare_targets(idx, lp, tail="renorm", row_mask=torch.ones(n, dtype=torch.bool))
    cases = {
        "copy floor": lambda: out.copy_(logits),
        "forward only": lambda: cpu.topd_kl(x, tg, 1.0, 1.0, None),
        "gradient into a reused buffer": lambda: cpu.topd_kl(x, tg, 1.0, 1.0, grad),
        "gradient in place": lambda: cpu.topd_kl(x, tg, 1.0, 1.0, x),
        # first-touch faults of a new N x V buffer, less with the op's prefault (populate)
        "gradient into a fresh buffer": lambda: cpu.topd_kl(x, tg, 1.0, 1.0, torch.empty_like(x)),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for fn in cases.values():
        fn()
    for _ in range(repeats):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    if not cpu.is_available(torch.device("cpu"))[0]:
        raise SystemExit("the C++ extension is not built")
    print(f"isa: {torch.ops.tsubasa_fast.cpu_isa()}, N={args.n}, V={VOCAB}, d=5, fp32, "
          f"medians of {args.repeats}")
    for threads in args.threads:
        res = run(args.n, threads, args.repeats)
        floor = res["copy floor"]
        for name, ms in res.items():
            print(f"threads={threads}  {name:30s} {ms:8.1f} ms  {ms / floor:5.2f}x floor")


if __name__ == "__main__":
    main()
