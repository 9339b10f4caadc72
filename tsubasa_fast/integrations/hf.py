"""The fused top-d KL inside a transformers causal LM: ``apply_topd_kl(model)``.

After patching, ``model(input_ids=..., attention_mask=..., teacher_indices=...,
teacher_logprobs=..., teacher_mask=...)`` runs the decoder, then
``fused_linear_topd_kl_loss`` over its final hidden states and the lm_head weight, and
returns ``CausalLMOutputWithPast(loss=..., logits=None)``: the (B, T, V) logits are never
built. A call without ``teacher_indices`` goes to the model's own forward untouched, so
generation, evaluation and the plain cross-entropy loss behave exactly as before.

The patch is on the instance (other models of the same class are untouched): its
``forward`` attribute becomes a bound method whose signature is the original one plus the
teacher arguments and the loss options, so ``generate`` (``logits_to_keep``) and
``Trainer`` (dataset columns kept by name) still see what they look for.
"""

from __future__ import annotations

import inspect
import math
import types
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import InputError
from ..loss import REDUCTIONS, fused_linear_topd_kl_loss
from ..ops.dispatch import BACKENDS
from ..ops.reference import IGNORE_INDEX, TAIL_MODES

# Families whose ``*ForCausalLM.forward`` is exactly "decoder -> lm_head (-> CE loss)", with
# no logit scaling or softcapping in between (checked against transformers 5.24), so the
# fused loss over the decoder's last hidden state and lm_head.weight is the model's loss.
SUPPORTED_MODEL_TYPES = ("gemma", "llama", "mistral", "olmo2", "qwen2", "qwen3", "smollm3")
TEACHER_ARGS = ("teacher_indices", "teacher_logprobs", "teacher_mask")
OPTION_DEFAULTS = {"tail": "renorm", "temperature": 1.0, "ce_weight": 0.0, "reduction": "mean",
                   "backend": "auto", "chunk_size": None}
# forward arguments the patched loss path consumes itself instead of passing to the decoder
_LOSS_ARGS = ("labels", "shift_labels", "logits_to_keep", "return_dict", "num_items_in_batch")
_STATE = "_tsubasa_topd_kl"


@dataclass
class _Patch:
    """What ``apply_topd_kl`` left on a model: how to restore it and the default options."""

    shim: types.FunctionType  # the function bound as model.forward
    previous: object  # the instance-level forward that was there before (None: the class's)
    signature: inspect.Signature  # the original forward's (bound, no self)
    options: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- public API


def apply_topd_kl(model, *, tail: str = "renorm", temperature: float = 1.0, ce_weight: float = 0.0,
                  reduction: str = "mean", backend: str = "auto", chunk_size: int | None = None):
    """Patches ``model`` (a supported transformers causal LM, or a peft model over one) in place
    so that a forward with ``teacher_indices``, ``teacher_logprobs`` and ``teacher_mask`` returns
    the fused top-d KL as ``loss`` and ``logits=None``. Returns ``model``.

    The keyword arguments are the loss options' defaults (see ``fused_linear_topd_kl_loss``);
    every one of them can also be passed to a single forward call. Applying again only
    replaces the defaults; ``remove_topd_kl`` restores the original forward.
    """
    lm = _causal_lm(model)
    options = _check_options({"tail": tail, "temperature": temperature, "ce_weight": ce_weight,
                              "reduction": reduction, "backend": backend, "chunk_size": chunk_size})
    _head(lm)  # an unsupported head fails now rather than at the first training step
    state = lm.__dict__.get(_STATE)
    if state is not None:
        state.options = options
        return model
    previous = lm.__dict__.get("forward")
    signature = inspect.signature(lm.forward)
    clash = [name for name in (*TEACHER_ARGS, *OPTION_DEFAULTS) if name in signature.parameters]
    if clash:
        raise InputError(f"{type(lm).__name__}.forward already has an argument {clash[0]!r}; "
                         "the top-d KL cannot add its own", field="model")
    shim = _make_shim(signature)
    setattr(lm, _STATE, _Patch(shim, previous, signature, options))
    lm.forward = types.MethodType(shim, lm)
    return model


def topd_kl_options(model) -> dict | None:
    """The loss options ``apply_topd_kl`` set on ``model`` (a copy), or None when it is not patched."""
    state = _causal_lm(model).__dict__.get(_STATE)
    return None if state is None else dict(state.options)


def remove_topd_kl(model):
    """Restores the forward ``apply_topd_kl`` replaced; a model never patched is left as is."""
    lm = _causal_lm(model)
    state = lm.__dict__.get(_STATE)
    if state is None:
        return model
    current = lm.__dict__.get("forward")
    if getattr(current, "__func__", None) is not state.shim or getattr(current, "__self__", None) is not lm:
        raise InputError("its forward was wrapped again after apply_topd_kl (e.g. by "
                         "accelerate's prepare); unwrap it before remove_topd_kl", field="model")
    if state.previous is None:
        del lm.forward
    else:
        lm.forward = state.previous
    delattr(lm, _STATE)
    return model


# --------------------------------------------------------------------------- patching


def _causal_lm(model):
    """The transformers model under ``model`` (itself, or a peft model's base model)."""
    from transformers import PreTrainedModel

    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    if not isinstance(base, PreTrainedModel):
        raise InputError(f"expected a transformers causal LM or a peft model over one, got "
                         f"{type(model).__name__}", field="model")
    model_type = getattr(base.config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES or not callable(getattr(base, "get_decoder", None)):
        raise InputError(f"{type(base).__name__} (model_type {model_type!r}) is not supported; "
                         f"supported families: {', '.join(SUPPORTED_MODEL_TYPES)}", field="model")
    return base


def _head(lm) -> nn.Linear:
    """The lm_head as a plain floating-point nn.Linear (what the fused loss sweeps)."""
    head = lm.get_output_embeddings()
    if not isinstance(head, nn.Linear) or not head.weight.is_floating_point():
        raise InputError(f"its lm_head is a {type(head).__name__}"
                         + ("" if not isinstance(head, nn.Linear) else f" with {head.weight.dtype} weights")
                         + "; the fused loss needs a plain floating-point nn.Linear (no LoRA, "
                         "modules_to_save or quantisation on the lm_head)", field="model")
    return head


def _make_shim(signature: inspect.Signature) -> types.FunctionType:
    """A function to bind as ``model.forward``: the original signature plus ours."""

    def forward(self, *args, **kwargs):
        return _forward(self, args, kwargs)

    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    rest = list(signature.parameters.values())
    var_kw = [p for p in rest if p.kind is inspect.Parameter.VAR_KEYWORD]
    params += [p for p in rest if p.kind is not inspect.Parameter.VAR_KEYWORD]
    params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None)
               for name in (*TEACHER_ARGS, *OPTION_DEFAULTS)]
    forward.__signature__ = inspect.Signature(params + var_kw,
                                              return_annotation=signature.return_annotation)
    forward.__doc__ = _forward.__doc__
    return forward


def _original(lm, state: _Patch):
    return state.previous if state.previous is not None else types.MethodType(type(lm).forward, lm)


def _forward(lm, args: tuple, kwargs: dict):
    """Without ``teacher_indices``: the model's own forward. With it: the decoder, then
    the fused top-d KL at the ``teacher_mask`` positions, ``logits=None``."""
    state: _Patch = lm.__dict__[_STATE]
    teacher = {name: kwargs.pop(name, None) for name in TEACHER_ARGS}
    overrides = {name: kwargs.pop(name, None) for name in OPTION_DEFAULTS}
    overrides = {name: value for name, value in overrides.items() if value is not None}
    if teacher["teacher_indices"] is None:
        given = [name for name in TEACHER_ARGS if teacher[name] is not None] + list(overrides)
        if given:
            raise InputError("given without teacher_indices (the top-d KL needs teacher_indices, "
                             "teacher_logprobs and teacher_mask)", field=given[0])
        return _original(lm, state)(*args, **kwargs)
    options = _check_options({**state.options, **overrides})
    try:
        call = state.signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise InputError(str(exc), field="args") from None
    named = dict(call.arguments)
    for p in state.signature.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            named.update(named.pop(p.name, {}))
    lead = _batch_shape(named.get("input_ids"), named.get("inputs_embeds"))
    idx, lp, mask = _check_teacher(lead, **teacher)
    labels = _ce_labels(lead, named.get("labels"), named.get("shift_labels"), options["ce_weight"])
    return_dict = named.get("return_dict")
    if return_dict is None:
        return_dict = getattr(lm.config, "return_dict", True)
    num_items = named.get("num_items_in_batch")
    decoder_args = {k: v for k, v in named.items() if k not in _LOSS_ARGS}
    if decoder_args.get("use_cache") is None:
        decoder_args["use_cache"] = False  # a loss call needs no KV cache
    out = lm.get_decoder()(**decoder_args)
    head = _head(lm)
    loss = _loss(out.last_hidden_state, head, idx, lp, mask, labels, options, num_items)
    from transformers.modeling_outputs import CausalLMOutputWithPast

    result = CausalLMOutputWithPast(loss=loss, logits=None, cache=getattr(out, "cache", None),
                                    hidden_states=out.hidden_states, attentions=out.attentions)
    return result if return_dict else result.to_tuple()


def _loss(hidden, head: nn.Linear, idx, lp, mask, labels, options: dict, num_items):
    """The fused loss in the lm_head's dtype and on its device (autocast off: the sweep's
    chunked matmuls and gradient buffers stay in one dtype)."""
    weight = head.weight
    dev = weight.device
    reduction = options["reduction"]
    per_item = num_items is not None and reduction == "mean"
    with torch.autocast(device_type=dev.type, enabled=False):
        loss = fused_linear_topd_kl_loss(
            hidden.to(device=dev, dtype=weight.dtype), weight, idx.to(dev), lp.to(dev),
            bias=head.bias, temperature=options["temperature"], tail=options["tail"],
            mask=mask.to(dev), reduction="sum" if per_item else reduction,
            labels=None if labels is None else labels.to(dev), ce_weight=options["ce_weight"],
            backend=options["backend"], chunk_size=options["chunk_size"])
    if per_item:
        if isinstance(num_items, torch.Tensor):
            num_items = num_items.to(loss.device)
        loss = loss / num_items
    return loss


# --------------------------------------------------------------------------- validation


def _check_options(options: dict) -> dict:
    tail, reduction, backend = options["tail"], options["reduction"], options["backend"]
    if tail not in TAIL_MODES:
        raise InputError(f"must be one of {TAIL_MODES}, got {tail!r}", field="tail")
    if reduction not in REDUCTIONS:
        raise InputError(f"must be one of {REDUCTIONS}, got {reduction!r}", field="reduction")
    if backend not in ("auto", *BACKENDS):
        raise InputError(f"must be one of {('auto', *BACKENDS)}, got {backend!r}", field="backend")
    for name, low_ok in (("temperature", False), ("ce_weight", True)):
        value = options[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value < 0 or (value == 0 and not low_ok):
            need = "a finite number >= 0" if low_ok else "a positive finite number"
            raise InputError(f"must be {need}, got {value!r}", field=name)
    size = options["chunk_size"]
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise InputError(f"must be a positive int or None, got {size!r}", field="chunk_size")
    return dict(options)


def _batch_shape(input_ids, inputs_embeds) -> tuple[int, int]:
    if input_ids is not None:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise InputError(f"must be a (B, T) tensor, got {_shape(input_ids)}", field="input_ids")
        return tuple(input_ids.shape)
    if not isinstance(inputs_embeds, torch.Tensor) or inputs_embeds.dim() != 3:
        raise InputError("input_ids (B, T) or inputs_embeds (B, T, H) is required with "
                         f"teacher_indices, got {_shape(inputs_embeds)}", field="input_ids")
    return tuple(inputs_embeds.shape[:2])


def _check_teacher(lead, teacher_indices, teacher_logprobs, teacher_mask):
    """Shapes only (values are checked by the loss): (B, T, d), (B, T, d), bool (B, T)."""
    if not isinstance(teacher_indices, torch.Tensor) or teacher_indices.dim() != 3 \
            or tuple(teacher_indices.shape[:2]) != lead:
        raise InputError(f"has shape {_shape(teacher_indices)}; expected (B, T, d) with (B, T) = "
                         f"{lead} of input_ids (position t holds the teacher's top-d for token t+1)",
                         field="teacher_indices")
    if teacher_logprobs is None:
        raise InputError("is required with teacher_indices", field="teacher_logprobs")
    if not isinstance(teacher_logprobs, torch.Tensor) or teacher_logprobs.shape != teacher_indices.shape:
        raise InputError(f"has shape {_shape(teacher_logprobs)}; expected "
                         f"{tuple(teacher_indices.shape)} like teacher_indices", field="teacher_logprobs")
    if teacher_mask is None:
        raise InputError("is required with teacher_indices: a bool (B, T) tensor, True where "
                         "position t holds the teacher's distribution of token t+1", field="teacher_mask")
    if not isinstance(teacher_mask, torch.Tensor) or teacher_mask.dtype != torch.bool \
            or tuple(teacher_mask.shape) != lead:
        got = _shape(teacher_mask) + ("" if not isinstance(teacher_mask, torch.Tensor) else f" {teacher_mask.dtype}")
        raise InputError(f"must be a bool tensor of shape {lead} (B, T of input_ids), got {got}",
                         field="teacher_mask")
    return teacher_indices, teacher_logprobs, teacher_mask


def _ce_labels(lead, labels, shift_labels, ce_weight: float):
    """The CE target of position t: ``labels[:, t+1]`` (transformers' convention, labels
    aligned with input_ids), or ``shift_labels[:, t]`` when already shifted; None if unused."""
    if ce_weight == 0:
        return None
    name, value = ("shift_labels", shift_labels) if shift_labels is not None else ("labels", labels)
    if value is None:
        raise InputError("is required when ce_weight > 0 (the CE term's targets)", field="labels")
    if not isinstance(value, torch.Tensor) or value.is_floating_point() or tuple(value.shape) != lead:
        raise InputError(f"must be an integer tensor of shape {lead}, got {_shape(value)}", field=name)
    if name == "shift_labels":
        return value
    return torch.nn.functional.pad(value[:, 1:], (0, 1), value=IGNORE_INDEX)


def _shape(value) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__
