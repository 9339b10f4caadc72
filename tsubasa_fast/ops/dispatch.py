"""One backend dispatch for every loss entry point.

backend="auto" picks Triton for CUDA tensors, the C++ kernels for CPU tensors when built,
else the torch reference. The environment variable TSUBASA_BACKEND overrides "auto".
With TRITON_INTERPRET=1, backend="triton" runs the Triton kernels on CPU tensors.
"""

from __future__ import annotations

import os
from types import ModuleType

import torch

from . import cpu as cpu_backend
from . import torch_backend

BACKENDS = ("triton", "cpu", "torch")
ENV_VAR = "TSUBASA_BACKEND"


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here (not built, not installed, wrong device)."""


def _triton_module() -> ModuleType:
    from . import triton as triton_backend  # imported lazily: importing triton is slow

    return triton_backend


def _module(name: str) -> ModuleType:
    if name == "triton":
        return _triton_module()
    return cpu_backend if name == "cpu" else torch_backend


def _availability(name: str, device: torch.device) -> tuple[bool, str]:
    if name == "triton":
        try:
            mod = _triton_module()
        except ImportError as exc:
            return False, f"triton is not importable ({exc})"
        return mod.is_available(device)
    return _module(name).is_available(device)


def resolve_backend(backend: str, device: torch.device) -> ModuleType:
    """The backend module to run on tensors of `device`; raises a clear error if impossible."""
    if not isinstance(backend, str):
        raise ValueError(f"backend must be a string, got {type(backend).__name__}")
    name = backend
    if name == "auto":
        name = os.environ.get(ENV_VAR, "").strip() or "auto"
        if name != "auto" and name not in BACKENDS:
            raise ValueError(f"{ENV_VAR}={name!r} is not one of {('auto',) + BACKENDS}")
    if name == "auto":
        candidates = ("triton",) if device.type == "cuda" else ("cpu",)
        for cand in candidates:
            if _availability(cand, device)[0]:
                return _module(cand)
        return torch_backend
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {('auto',) + BACKENDS}, got {backend!r}")
    ok, why = _availability(name, device)
    if not ok:
        raise BackendUnavailableError(f"backend {name!r} is not available: {why}")
    return _module(name)


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Names of the backends that can run on tensors of `device`."""
    device = torch.device(device)
    return [name for name in BACKENDS if _availability(name, device)[0]]
