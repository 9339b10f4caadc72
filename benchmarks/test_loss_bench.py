"""pytest-benchmark micro-benchmarks of the loss entry points (not part of `make test`).

Run: .venv/bin/python -m pytest benchmarks/test_loss_bench.py --benchmark-enable
Each case benchmarks the naive torch eager baseline beside every backend, in one session,
grouped so pytest-benchmark prints them side by side.
"""

import pytest
import torch

import tsubasa_fast as tf

from .loss import D, VOCAB, naive_select, naive_topd_kl

N = 256
BACKENDS = [b for b in tf.available_backends("cpu") if b != "triton"]  # no timing under the interpreter
IMPLS = ["naive"] + BACKENDS


@pytest.fixture(scope="module")
def case():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(N, VOCAB, generator=g)
    top = tf.select_topd(logits + 0.5, D)
    return logits, top.indices, top.logprobs


@pytest.mark.parametrize("impl", IMPLS)
def test_select_topd(benchmark, case, impl):
    benchmark.group = f"select_topd N={N} V={VOCAB} d={D}"
    logits = case[0]
    if impl == "naive":
        benchmark(naive_select, logits, D)
    else:
        benchmark(tf.select_topd, logits, D, backend=impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_topd_kl_forward_backward(benchmark, case, impl):
    benchmark.group = f"topd_kl fwd+bwd N={N} V={VOCAB} d={D}"
    logits, idx, lp = case
    x = logits.clone().requires_grad_()

    def run():
        loss = naive_topd_kl(x, idx, lp) if impl == "naive" else tf.topd_kl_loss(x, idx, lp, backend=impl)
        loss.backward()
        x.grad = None

    benchmark(run)


@pytest.mark.parametrize("impl", IMPLS)
def test_fused_linear_forward_backward(benchmark, impl):
    benchmark.group = f"fused linear topd_kl fwd+bwd N={N} H=512 V={VOCAB} d={D}"
    g = torch.Generator().manual_seed(1)
    h = torch.randn(N, 512, generator=g).requires_grad_()
    w = torch.randn(VOCAB, 512, generator=g) / 512**0.5
    top = tf.fused_linear_select_topd(h.detach() * 1.1, w, D)

    def run():
        if impl == "naive":
            loss = naive_topd_kl(h @ w.T, top.indices, top.logprobs)
        else:
            loss = tf.fused_linear_topd_kl_loss(h, w, top.indices, top.logprobs, backend=impl)
        loss.backward()
        h.grad = None

    benchmark(run)
