"""Test configuration. Without a GPU the Triton kernels run under the interpreter, which
must be switched on before any @triton.jit decorator runs, i.e. before tsubasa_fast imports."""

import os

import pytest

try:
    import torch

    _has_cuda = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    _has_cuda = False
if not _has_cuda:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.pop("TSUBASA_BACKEND", None)

import tsubasa_fast  # noqa: E402

DEVICE = "cuda" if _has_cuda else "cpu"
BACKENDS = tsubasa_fast.available_backends(DEVICE)


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param
