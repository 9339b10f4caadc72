"""Kernel layer: the torch reference (the specification), the Triton kernels, the C++ binding,
and the one dispatch that picks between them. Nothing here imports the higher layers.

Every backend module exposes the same three functions on 2-D, row-contiguous tensors:

* ``is_available(device) -> (bool, reason)``
* ``select_topd(logits [N, V], d, temperature) -> (indices int32 [N, d], logprobs f32 [N, d])``;
  rows with a NaN or inf logit get NaN log-probabilities.
* ``topd_kl(logits [N, V], targets: TopDTargets, temperature, grad_scale, grad_out)``
  ``-> loss f32 [N]``; when ``grad_out`` ([N, V], logits' dtype, may alias ``logits``) is given
  it receives grad_scale * dL/dlogits. Rows with a NaN or inf logit get a NaN loss.
"""

from .dispatch import BACKENDS, BackendUnavailableError, available_backends, resolve_backend

__all__ = ["BACKENDS", "BackendUnavailableError", "available_backends", "resolve_backend"]
