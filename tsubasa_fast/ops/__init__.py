"""Kernel layer: the torch reference (the specification), the Triton kernels, the C++ binding,
and the one dispatch that picks between them. Nothing here imports the higher layers.

Every backend module exposes the same three functions on 2-D, row-contiguous tensors:

* ``is_available(device) -> (bool, reason)``
* ``select_topd(logits [N, V], d, temperature) -> (indices int32 [N, d], logprobs f32 [N, d])``;
  rows with a NaN or inf logit get NaN log-probabilities.
* ``topd_kl(logits [N, V], targets: TopDTargets, temperature, grad_scale, grad_out)``
  ``-> loss [N]`` (float64 for float64 logits, else float32); when ``grad_out`` ([N, V],
  logits' dtype, may alias ``logits``) is given it receives grad_scale * dL/dlogits. Rows
  with a NaN or +inf logit get a NaN loss; -inf logits are allowed (q = 0, gradient 0) and
  make the loss +inf only at a teacher index or the CE label. A loss too large for its
  dtype comes back as inf; the caller turns every non-finite row into a clear error.
"""

from .dispatch import BACKENDS, BackendUnavailableError, available_backends, resolve_backend

__all__ = ["BACKENDS", "BackendUnavailableError", "available_backends", "resolve_backend"]
