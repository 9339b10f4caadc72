"""The teacher top-d cache on disk: safetensors shards plus a JSON manifest.

Per answer token the cache keeps the teacher's d token ids (int32) and log-probabilities
(fp16 or bf16): 6*d bytes, 30 at d=5, against ~300 KB for a dense bf16 row at Qwen3's
vocabulary. Each shard holds whole examples (int32 `offsets` delimit them; their keys are listed in
the manifest). The manifest records what the cache was built from (model fingerprint,
tokenizer hash, vocabulary size, d, temperature, prompt-template version) and a sha256 per
shard; it is rewritten atomically after every shard, so an interrupted run resumes after
the last complete shard and a damaged shard is detected by its checksum.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..fileio import atomic_output, atomic_write_bytes, sha256_file

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_LOGPROB_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


class CacheError(ValueError):
    """The cache cannot be used: built for another model or setup, or damaged."""


@dataclass(frozen=True)
class CacheSpec:
    """What a cache was built from; a reader must match it exactly (vocab: teacher <= student)."""

    model_fingerprint: str
    tokenizer_hash: str
    vocab_size: int
    d: int
    temperature: float
    template_version: str
    logprob_dtype: str = "float16"

    def __post_init__(self):
        if self.d < 1:
            raise ValueError(f"d must be >= 1, got {self.d}")
        if self.vocab_size < self.d:
            raise ValueError(f"vocab_size ({self.vocab_size}) must be >= d ({self.d})")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.logprob_dtype not in _LOGPROB_DTYPES:
            raise ValueError(f"logprob_dtype must be one of {sorted(_LOGPROB_DTYPES)}")


@dataclass
class _Manifest:
    spec: CacheSpec
    shards: list = field(default_factory=list)  # [{"file", "sha256", "examples", "tokens"}]
    complete: bool = False
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(
            {"format_version": self.format_version, **asdict(self.spec),
             "shards": self.shards, "complete": self.complete},
            indent=1,
        )

    @classmethod
    def read(cls, directory: Path) -> "_Manifest":
        path = directory / MANIFEST
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise CacheError(f"{directory} is not a teacher cache (no {MANIFEST})") from None
        except json.JSONDecodeError as exc:
            raise CacheError(f"{path} is not valid JSON ({exc})") from None
        if raw.get("format_version") != FORMAT_VERSION:
            raise CacheError(f"{path}: format_version {raw.get('format_version')!r}, "
                             f"this version reads {FORMAT_VERSION}")
        fields = CacheSpec.__dataclass_fields__
        try:
            spec = CacheSpec(**{k: raw[k] for k in fields})
        except KeyError as exc:
            raise CacheError(f"{path} is missing the field {exc.args[0]!r}") from None
        return cls(spec=spec, shards=list(raw.get("shards", [])), complete=bool(raw.get("complete")))

    def write(self, directory: Path) -> None:
        atomic_write_bytes(directory / MANIFEST, self.to_json().encode())


def _mismatches(built: CacheSpec, wanted: CacheSpec) -> list[str]:
    out = []
    for name in ("model_fingerprint", "tokenizer_hash", "d", "template_version"):
        if getattr(built, name) != getattr(wanted, name):
            out.append(f"{name}: cache has {getattr(built, name)!r}, expected {getattr(wanted, name)!r}")
    if abs(built.temperature - wanted.temperature) > 1e-9:
        out.append(f"temperature: cache has {built.temperature}, expected {wanted.temperature}")
    if built.vocab_size > wanted.vocab_size:
        out.append(f"vocab_size: the teacher's vocabulary ({built.vocab_size}) is larger than "
                   f"the student's ({wanted.vocab_size})")
    return out


class TeacherCacheWriter:
    """Appends examples to a cache directory, one shard per `shard_tokens` answer tokens.

    Reopening a directory with the same spec resumes: ``done`` holds the keys already stored
    (complete shards only; a shard that was being written when the run died is discarded).
    """

    def __init__(self, directory: str | os.PathLike, spec: CacheSpec, *, shard_tokens: int = 65536):
        if shard_tokens < 1:
            raise ValueError(f"shard_tokens must be >= 1, got {shard_tokens}")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.spec = spec
        self.shard_tokens = shard_tokens
        if (self.dir / MANIFEST).exists():
            self.manifest = _Manifest.read(self.dir)
            if self.manifest.spec != spec:
                problems = _mismatches(self.manifest.spec, spec) or [
                    f"cache has {self.manifest.spec}, expected {spec}"
                ]
                raise CacheError(f"cannot resume the cache in {self.dir}: " + "; ".join(problems))
            _verify_shards(self.dir, self.manifest.shards)
            self.manifest.complete = False
        else:
            self.manifest = _Manifest(spec=spec)
            self.manifest.write(self.dir)
        self.done: set[str] = {k for s in self.manifest.shards for k in s["examples"]}
        self._pending: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        self._pending_tokens = 0

    def add(self, key: str, indices: torch.Tensor, logprobs: torch.Tensor) -> None:
        """Queues one example's [T, d] teacher entries; writes a shard when enough are queued."""
        if key in self.done or any(k == key for k, _, _ in self._pending):
            raise ValueError(f"example {key!r} is already in the cache")
        d = self.spec.d
        if indices.dim() != 2 or indices.shape[1] != d or logprobs.shape != indices.shape:
            raise ValueError(f"example {key!r}: indices and logprobs must both be [T, {d}], got "
                             f"{tuple(indices.shape)} and {tuple(logprobs.shape)}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.spec.vocab_size):
            raise ValueError(f"example {key!r}: a token id is outside [0, {self.spec.vocab_size})")
        if not torch.isfinite(logprobs).all():
            raise ValueError(f"example {key!r}: logprobs contain NaN or inf")
        self._pending.append((key, indices.to("cpu", torch.int32),
                              logprobs.to("cpu", _LOGPROB_DTYPES[self.spec.logprob_dtype])))
        self._pending_tokens += indices.shape[0]
        if self._pending_tokens >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        """Writes the queued examples as one shard (atomically) and records it in the manifest."""
        if not self._pending:
            return
        keys = [k for k, _, _ in self._pending]
        lengths = torch.tensor([0] + [i.shape[0] for _, i, _ in self._pending], dtype=torch.int32)
        tensors = {
            "indices": torch.cat([i for _, i, _ in self._pending]).contiguous(),
            "logprobs": torch.cat([lp for _, _, lp in self._pending]).contiguous(),
            "offsets": lengths.cumsum(0, dtype=torch.int32),
        }
        name = f"shard-{len(self.manifest.shards):05d}.safetensors"
        with atomic_output(self.dir / name) as tmp:
            save_file(tensors, str(tmp))
        self.manifest.shards.append({
            "file": name, "sha256": sha256_file(self.dir / name),
            "examples": keys, "tokens": int(lengths.sum()),
        })
        self.manifest.write(self.dir)
        self.done.update(keys)
        self._pending.clear()
        self._pending_tokens = 0

    def close(self) -> None:
        """Flushes the rest and marks the cache complete."""
        self.flush()
        self.manifest.complete = True
        self.manifest.write(self.dir)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.flush()  # keep what was computed; the cache stays incomplete (resumable)


def _verify_shards(directory: Path, shards: list) -> None:
    for shard in shards:
        path = directory / shard["file"]
        if not path.exists():
            raise CacheError(f"shard {path} is missing")
        if sha256_file(path) != shard["sha256"]:
            raise CacheError(f"shard {path} is damaged: its sha256 does not match the manifest")


def read_cache_spec(directory: str | os.PathLike) -> CacheSpec:
    """What a cache was built from (its manifest only; no shard is read or hashed)."""
    return _Manifest.read(Path(directory)).spec


class TeacherCache:
    """Read access to a complete cache; refuses a cache built for another student setup."""

    def __init__(self, directory: str | os.PathLike, expect: CacheSpec | None = None):
        self.dir = Path(directory)
        self.manifest = _Manifest.read(self.dir)
        self.spec = self.manifest.spec
        if not self.manifest.complete:
            raise CacheError(f"the cache in {self.dir} is incomplete (an interrupted run?): "
                             "rerun teacher-cache to finish it")
        if expect is not None:
            problems = _mismatches(self.spec, expect)
            if problems:
                raise CacheError(f"the cache in {self.dir} does not fit this student: " + "; ".join(problems))
        _verify_shards(self.dir, self.manifest.shards)
        self._where: dict[str, tuple[int, int]] = {}
        for s, shard in enumerate(self.manifest.shards):
            for e, key in enumerate(shard["examples"]):
                self._where[key] = (s, e)
        self._loaded: dict[int, dict[str, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def keys(self) -> list[str]:
        return list(self._where)

    @property
    def tokens(self) -> int:
        return sum(s["tokens"] for s in self.manifest.shards)

    def bytes_per_token(self) -> float:
        """Bytes on disk per cached answer token (all shards and the manifest)."""
        size = (self.dir / MANIFEST).stat().st_size
        size += sum((self.dir / s["file"]).stat().st_size for s in self.manifest.shards)
        return size / max(1, self.tokens)

    def get(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices int32 [T, d], logprobs float32 [T, d]) of one example."""
        try:
            s, e = self._where[key]
        except KeyError:
            raise KeyError(f"example {key!r} is not in the cache {self.dir}") from None
        if s not in self._loaded:
            self._loaded[s] = load_file(str(self.dir / self.manifest.shards[s]["file"]))
        t = self._loaded[s]
        lo, hi = int(t["offsets"][e]), int(t["offsets"][e + 1])
        return t["indices"][lo:hi], t["logprobs"][lo:hi].float()
