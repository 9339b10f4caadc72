"""The C++ kernels: built on every machine with a compiler, and every ISA path is exact."""

import os
import subprocess
import sys
import textwrap

import pytest

import tsubasa_fast as tf


def test_extension_is_built():
    # setup.py turns a compiler failure into a warning; CI has a compiler, so a missing
    # extension here means a real build problem that would otherwise hide behind the fallback.
    if os.environ.get("TSUBASA_NO_EXTENSION"):
        pytest.skip("TSUBASA_NO_EXTENSION is set: the extension was skipped on purpose")
    assert "cpu" in tf.available_backends("cpu")


SCRIPT = textwrap.dedent("""
    import torch, tsubasa_fast as tf
    from tsubasa_fast.ops import reference
    print(torch.ops.tsubasa_fast.cpu_isa())
    # the kernels' vector exp against float64, in units in the last place of the float result:
    # every 997th float of [ln 2^-126, 88] and a dense grid over [-1, 1] (the table steps)
    bits = torch.cat([torch.arange(0, 0x42B00000, 997), torch.arange(-0x80000000, -0x3D5153B0, 997)])
    x = torch.cat([bits.int().view(torch.float32), torch.linspace(-1, 1, 400001)])
    x = x[(x >= -87.33654) & (x <= 88)]
    ref = x.double().exp()
    ulp = torch.ldexp(torch.ones_like(ref), torch.frexp(ref).exponent - 24)
    err = ((torch.ops.tsubasa_fast.cpu_exp(x).double() - ref).abs() / ulp).max().item()
    assert err <= 1.5, err
    special = torch.tensor([float("-inf"), -1e4, -87.34, float("nan"), 0.0])
    got = torch.ops.tsubasa_fast.cpu_exp(special)
    assert torch.equal(got[:3], torch.zeros(3)) and got[3].isnan() and got[4] == 1.0, got
    g = torch.Generator().manual_seed(0)
    # V = 1001: rows start off the vector alignment (the streaming stores' scalar head);
    # row 1 of the large case is masked (-inf) over its first blocks, outside the teacher set
    for vocab, d in ((1000, 5), (1001, 3), (151936, 64)):
        t = torch.randn(5, vocab, generator=g, dtype=torch.float64) * 3
        x = (t + torch.randn(5, vocab, generator=g, dtype=torch.float64)).float()
        idx, lp = reference.select_topd(t, d)
        top = tf.select_topd(x, d, backend="cpu")
        assert torch.equal(top.indices.long(), reference.select_topd(x.double(), d)[0])
        if vocab > 5000:
            keep = x[1].clone()
            x[1, :5000] = float("-inf")
            x[1, idx[1]] = keep[idx[1]]
        # row 2 masked out, a CE label per row (the label's own gradient entry)
        mask = torch.tensor([True, True, False, True, True])
        labels = torch.randint(0, vocab, (5,), generator=g)
        for tail in reference.TAIL_MODES:
            xr = x.double().requires_grad_()
            rows = reference.topd_kl(xr, idx, lp, tail=tail, temperature=1.3, labels=labels,
                                     ce_weight=0.5)
            want = rows[mask].mean()
            want.backward()
            for inplace in (False, True):  # gradient into its own buffer (streamed) / the logits
                xs = x.clone().requires_grad_()
                loss = tf.topd_kl_loss(xs * 1, idx, lp.float(), tail=tail, temperature=1.3,
                                       mask=mask, labels=labels, ce_weight=0.5, backend="cpu",
                                       inplace_backward=inplace)
                loss.backward()
                assert abs(loss.item() - want.item()) <= 1e-5 * abs(want.item()), (tail, loss, want)
                assert (xs.grad - xr.grad).abs().max() <= 1e-4 * xr.grad.abs().max()
                assert torch.equal(xs.grad[2], torch.zeros(vocab))
    print("ok")
""")


@pytest.mark.parametrize("isa", ["avx512", "avx2", "default"])
def test_every_isa_path_matches_the_reference(isa):
    if "cpu" not in tf.available_backends("cpu"):
        pytest.skip("the C++ extension is not built")
    env = {**os.environ, "TSUBASA_CPU_ISA": isa}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    chosen, status = out.stdout.split()[-2:]
    assert status == "ok"
    if isa != "avx512":  # a forced narrower path must really be taken
        assert chosen == isa
