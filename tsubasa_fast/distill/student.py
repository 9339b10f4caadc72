"""The per-user student: one copy of the base model plus a LoRA adapter (peft).

On CUDA the base loads in 4-bit NF4 with double quantisation (QLoRA, bf16 compute) and
FlashAttention 2 when flash-attn is importable, else SDPA. On CPU it loads in fp32, or in
bitsandbytes 4-bit on request. The teacher pass is the same model with the adapter
disabled, so teacher and student never need two copies in memory. The loss never sees
full logits: callers take the decoder's final hidden states and the lm_head weight.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from .. import models
from ..errors import InputError
from ..fileio import move_files_into
from .configs import StudentConfig  # noqa: F401  (re-exported: student.StudentConfig)
from .prompts import TEMPLATE_VERSION

ADAPTER_META = "tsubasa_adapter.json"


class AdapterMismatchError(InputError):
    """An adapter was trained on another base model or tokenizer."""


def flash_attention_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


class Student:
    """Base model + LoRA adapter, with the hooks the engine needs (hidden states, lm_head)."""

    def __init__(self, config: StudentConfig, adapter: str | os.PathLike | None = None,
                 trainable: bool = True):
        from peft import LoraConfig, PeftModel, get_peft_model

        self.config = config
        self.device, four_bit, _ = models.load_policy(config.device, config.load_in_4bit)
        cuda = self.device.type == "cuda"
        self.attn_implementation = "flash_attention_2" if (cuda and flash_attention_available()) else "sdpa"
        self.model_dir = models.resolve_causal_lm(config.model)
        base, self.tokenizer = models.load_causal_lm(self.model_dir, device=str(self.device), load_in_4bit=four_bit,
                                                    attn_implementation=self.attn_implementation)
        if getattr(base.config, "final_logit_softcapping", None):
            raise ValueError("models with final-logit softcapping are not supported by the fused loss")
        self.four_bit = four_bit
        if four_bit and self.device.type == "cpu":
            _keep_4bit_differentiable(base)
        self.fingerprint = models.model_fingerprint(self.model_dir)
        self.tokenizer_hash = models.tokenizer_hash(self.tokenizer)
        torch.manual_seed(config.seed)
        if adapter is not None:
            check_adapter(adapter, self)
            self.model = PeftModel.from_pretrained(base, str(adapter), is_trainable=trainable)
        else:
            lora = LoraConfig(r=config.lora_r, lora_alpha=config.alpha,
                              lora_dropout=config.lora_dropout, target_modules=list(config.target_modules),
                              task_type="CAUSAL_LM")
            self.model = get_peft_model(base, lora)
        if config.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.base = self.model.get_base_model()
        self.decoder = self.base.get_decoder()
        head = self.base.get_output_embeddings()
        self.head_weight = head.weight
        self.head_bias = getattr(head, "bias", None)
        self.vocab_size = int(self.head_weight.shape[0])

    # -------------------------------------------------------------------- forward passes

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Final (normed) decoder hidden states [B, T, H], adapter as currently enabled."""
        out = self.decoder(input_ids=input_ids.to(self.device),
                           attention_mask=attention_mask.to(self.device), use_cache=False)
        return out.last_hidden_state

    @contextlib.contextmanager
    def teacher(self):
        """The frozen base model: the adapter is disabled inside this block."""
        with self.model.disable_adapter(), torch.no_grad():
            yield self

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    # -------------------------------------------------------------------- adapters on disk

    def load_adapter_weights(self, directory: str | os.PathLike) -> None:
        """Loads a saved adapter's weights into this student's adapter (checked first: same base
        model and tokenizer, and every tensor a key of this adapter)."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        check_adapter(directory, self)
        weights = load_file(str(Path(directory) / "adapter_model.safetensors"), device=str(self.device))
        result = set_peft_model_state_dict(self.model, weights)
        if getattr(result, "unexpected_keys", None):
            raise AdapterMismatchError(f"the adapter in {directory} does not fit this student (unexpected "
                                       f"{result.unexpected_keys[:3]})", field="adapter")

    def save_adapter(self, directory: str | os.PathLike, meta: dict | None = None) -> Path:
        """Writes the adapter and its metadata into `directory` (other files there stay).

        Files are written to a temporary folder and moved in one by one with os.replace;
        the metadata file goes last, so a directory with metadata holds a whole adapter.
        """
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".adapter.", dir=target))
        try:
            model = getattr(self.model, "module", self.model)
            model.save_pretrained(str(tmp))
            info = {"base_fingerprint": self.fingerprint, "tokenizer_hash": self.tokenizer_hash,
                    "base_model": str(self.model_dir), "template_version": TEMPLATE_VERSION,
                    "student": {**{k: v for k, v in asdict(self.config).items() if k != "extra"},
                                "lora_alpha": self.config.alpha},
                    **(meta or {})}
            (tmp / ADAPTER_META).write_text(json.dumps(info, indent=1, default=str))
            (target / ADAPTER_META).unlink(missing_ok=True)
            move_files_into(tmp, target, last=ADAPTER_META)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target


def _keep_4bit_differentiable(model) -> None:
    """bitsandbytes repacks CPU 4-bit weights for its inference kernel on the first eval-mode
    no-grad forward (our teacher pass); that kernel has no autograd, so a later training
    backward would silently drop the gradient through those layers. Keep the regular path."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def adapter_meta(directory: str | os.PathLike) -> dict:
    path = Path(directory) / ADAPTER_META
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a tsubasa_fast adapter (no {ADAPTER_META})")
    return json.loads(path.read_text())


def check_adapter(directory: str | os.PathLike, student: "Student") -> dict:
    """Refuses an adapter trained on another base model or tokenizer."""
    meta = adapter_meta(directory)
    if meta.get("base_fingerprint") != student.fingerprint:
        raise AdapterMismatchError(
            f"the adapter in {directory} was trained on base model {meta.get('base_model')!r} "
            f"(fingerprint {str(meta.get('base_fingerprint'))[:12]}), not on {student.model_dir} "
            f"(fingerprint {student.fingerprint[:12]})")
    if meta.get("tokenizer_hash") != student.tokenizer_hash:
        raise AdapterMismatchError(f"the adapter in {directory} was trained with another tokenizer")
    return meta
