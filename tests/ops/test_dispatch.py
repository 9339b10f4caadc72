"""One dispatch: explicit names, "auto", the TSUBASA_BACKEND override and clear errors."""

import pytest
import torch

import tsubasa_fast as tf
from tsubasa_fast.ops import dispatch

from ..helpers import make_case


def test_auto_on_cpu_prefers_the_compiled_kernels(monkeypatch):
    monkeypatch.delenv("TSUBASA_BACKEND", raising=False)
    chosen = dispatch.resolve_backend("auto", torch.device("cpu")).NAME
    assert chosen == ("cpu" if "cpu" in tf.available_backends() else "torch")


def test_environment_overrides_auto(monkeypatch):
    monkeypatch.setenv("TSUBASA_BACKEND", "torch")
    assert dispatch.resolve_backend("auto", torch.device("cpu")).NAME == "torch"
    # an explicit backend wins over the environment
    assert dispatch.resolve_backend("torch", torch.device("cpu")).NAME == "torch"
    monkeypatch.setenv("TSUBASA_BACKEND", "fastest")
    with pytest.raises(ValueError, match="TSUBASA_BACKEND"):
        dispatch.resolve_backend("auto", torch.device("cpu"))


def test_unknown_backend_name():
    x, idx, lp = make_case(2, 50, 3)
    with pytest.raises(ValueError, match="backend"):
        tf.topd_kl_loss(x, idx, lp, backend="cuda")


def test_unavailable_backend_is_a_clear_error(monkeypatch):
    from tsubasa_fast.ops import cpu

    monkeypatch.setattr(cpu, "_OPS", None)
    monkeypatch.setattr(cpu, "_IMPORT_ERROR", "the C++ extension tsubasa_fast._C is not built (test)")
    x, idx, lp = make_case(2, 50, 3)
    with pytest.raises(tf.BackendUnavailableError, match="'cpu' is not available.*not built"):
        tf.topd_kl_loss(x, idx, lp, backend="cpu")
    assert "cpu" not in tf.available_backends()
    monkeypatch.delenv("TSUBASA_BACKEND", raising=False)
    assert dispatch.resolve_backend("auto", torch.device("cpu")).NAME == "torch"


def test_backends_agree_with_each_other():
    x, idx, lp = make_case(5, 300, 5, seed=3)
    losses = [tf.topd_kl_loss(x, idx, lp, backend=b) for b in tf.available_backends()]
    for loss in losses[1:]:
        torch.testing.assert_close(loss, losses[0], rtol=1e-5, atol=1e-6)
