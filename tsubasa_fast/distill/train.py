"""Student training: top-d context distillation with the fused loss.

The student (base + LoRA) sees the question plus the top-k memories retrieved from the
user's evolved store; its final hidden states at the answer-predicting rows go straight
into ``fused_linear_topd_kl_loss`` against the cached teacher entries, so the student's
logits are never materialised either.

Exactness: the data order is a function of (seed, position) only; step s trains on
positions [s*B, (s+1)*B) of a sequence of per-epoch permutations. The loss of a step is the
sum over its answer tokens divided by the step's token count, so gradient accumulation and
DistributedDataParallel (torchrun; gloo on CPU, nccl on CUDA) compute the same gradient as
one process with the whole batch. A checkpoint (adapter, optimizer, scheduler, step) is
written atomically every ``checkpoint_every`` steps and on Ctrl-C, and a rerun resumes
from it and reproduces the uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

from ..fileio import atomic_output, atomic_write_text
from ..loss import fused_linear_topd_kl_loss
from ..memory.retrieval import DEFAULT_MODE
from ..ops.reference import TAIL_MODES
from ..progress import progress_bar
from .cache import CacheSpec, TeacherCache, read_cache_spec
from .data import Encoded, QAPair, collate, encode
from .prompts import TEMPLATE_VERSION, student_messages

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint"
STUDENT_DATA = "student_data.jsonl"
METRICS = "metrics.jsonl"
LOSS_PLOT = "loss.png"


@dataclass
class TrainConfig:
    steps: int | None = None  # optimizer steps; None = derived from epochs
    epochs: float = 1.0
    batch_size: int = 8  # examples per optimizer step, across all processes
    micro_batch_size: int = 4  # examples per forward pass in one process
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    tail: str = "renorm"
    ce_weight: float = 0.0
    k: int = 3  # memories in the student prompt
    grounding: bool = True  # False: the question alone (the "no grounding" ablation)
    retrieval: str = DEFAULT_MODE  # the best measured (benchmarks/README.md)
    checkpoint_every: int = 50
    max_length: int = 1024
    seed: int = 0

    def validate(self) -> None:
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not self.epochs > 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        for name in ("batch_size", "micro_batch_size", "checkpoint_every", "k", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.tail not in TAIL_MODES:
            raise ValueError(f"tail must be one of {TAIL_MODES}, got {self.tail!r}")
        if not (self.lr > 0 and 0 <= self.warmup_ratio < 1 and self.ce_weight >= 0):
            raise ValueError("lr must be > 0, warmup_ratio in [0, 1), ce_weight >= 0")


# ------------------------------------------------------------------------ student data


def build_student_data(pairs: list[QAPair], retrieve: Callable[[str], list[str]] | None,
                       out_dir: Path, config: TrainConfig) -> list[dict]:
    """The student prompt of every pair (its retrieved memories), fixed at the first run.

    Written to ``out_dir/student_data.jsonl`` and reused on resume, so a store that changed
    in between cannot change what an interrupted run trains on.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / STUDENT_DATA
    keys = [p.key for p in pairs]
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if [r["key"] for r in rows] == keys:
            return rows
        log.warning("%s does not match the QA file; rebuilding it", path)
    rows = []
    for p in progress_bar(pairs, desc="retrieving memories", unit="pair", disable=len(pairs) < 50):
        memories = retrieve(p.question) if (config.grounding and retrieve is not None) else None
        rows.append({"key": p.key, "question": p.question, "answer": p.answer, "memories": memories})
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def encode_student(tokenizer, row: dict, max_length: int) -> Encoded:
    return encode(tokenizer, student_messages(row["memories"], row["question"]), row["answer"], max_length)


# ------------------------------------------------------------------------ the loss module


class DistillLoss(nn.Module):
    """Student forward + fused top-d KL over the answer rows; wrapped by DDP when distributed."""

    def __init__(self, student, config: TrainConfig, temperature: float):
        super().__init__()
        self.student = student
        self.peft_model = student.model  # registers the parameters for DDP
        self.config = config
        self.temperature = temperature

    def forward(self, batch: dict, idx: torch.Tensor, lp: torch.Tensor, scale: float) -> torch.Tensor:
        s = self.student
        hidden = s.hidden_states(batch["input_ids"], batch["attention_mask"])
        target = batch["target_mask"].to(hidden.device)
        rows = hidden[target]
        labels = None
        if self.config.ce_weight > 0:
            nxt = torch.roll(batch["input_ids"], -1, dims=1).to(hidden.device)
            labels = nxt[target]
        loss_sum = fused_linear_topd_kl_loss(
            rows, s.head_weight, idx.to(hidden.device), lp.to(hidden.device), bias=s.head_bias,
            temperature=self.temperature, tail=self.config.tail, reduction="sum",
            labels=labels, ce_weight=self.config.ce_weight)
        return loss_sum * scale


# ------------------------------------------------------------------------ checkpoints


def _save_checkpoint(out_dir: Path, student, optimizer, scheduler, step: int, config: TrainConfig) -> None:
    with atomic_output(out_dir / CHECKPOINT, directory=True) as tmp:
        params = {n: p.detach().cpu().contiguous() for n, p in student.model.named_parameters() if p.requires_grad}
        save_file(params, str(tmp / "adapter_params.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "step": step, "config": asdict(config), "rng": torch.get_rng_state()},
                   tmp / "state.pt")


def _load_checkpoint(out_dir: Path, student, optimizer, scheduler) -> int:
    target = out_dir / CHECKPOINT
    if not (target / "state.pt").is_file():
        return 0
    params = load_file(str(target / "adapter_params.safetensors"))
    named = dict(student.model.named_parameters())
    missing = [n for n, p in named.items() if p.requires_grad and n not in params]
    if missing:
        raise ValueError(f"checkpoint in {target} does not fit this student (missing {missing[0]})")
    with torch.no_grad():
        for n, t in params.items():
            named[n].copy_(t.to(named[n].device, named[n].dtype))
    state = torch.load(target / "state.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return int(state["step"])


# ------------------------------------------------------------------------ the loop


def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> bool:
    """Joins the process group when launched by torchrun (gloo on CPU, nccl on CUDA)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) < 2:
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend=backend)
    return True


def batch_positions(step: int, batch_size: int, n: int, seed: int) -> list[int]:
    """The example indices of optimizer step `step`: positions [s*B, (s+1)*B) of the
    concatenated per-epoch permutations (epoch e shuffled with seed + e)."""
    out, perms = [], {}
    for pos in range(step * batch_size, (step + 1) * batch_size):
        epoch, i = divmod(pos, n)
        if epoch not in perms:
            perms[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        out.append(perms[epoch][i])
    return out


def train(student, pairs: list[QAPair], cache_dir, out_dir, config: TrainConfig,
          retrieve: Callable[[str], list[str]] | None = None, progress: bool = True,
          on_step: Callable[[int, float], None] | None = None, user: str | None = None) -> dict:
    """Trains the student's adapter; returns a summary. Resumes from ``out_dir/checkpoint``.

    ``user`` is recorded in the adapter's metadata; answering refuses another user's adapter.
    """
    from transformers import get_cosine_schedule_with_warmup

    config.validate()
    rank, world = _dist()
    if config.batch_size % world:
        raise ValueError(f"batch_size ({config.batch_size}) must be a multiple of the number of "
                         f"processes ({world})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    built = read_cache_spec(cache_dir)  # d and temperature are the cache's to choose
    expect = CacheSpec(model_fingerprint=student.fingerprint, tokenizer_hash=student.tokenizer_hash,
                       vocab_size=student.vocab_size, d=built.d, temperature=built.temperature,
                       template_version=TEMPLATE_VERSION, logprob_dtype=built.logprob_dtype)
    cache = TeacherCache(cache_dir, expect=expect)
    missing = [p.key for p in pairs if p.key not in cache]
    if missing:
        raise ValueError(f"{len(missing)} QA pairs are not in the teacher cache {cache_dir} "
                         f"(first: {missing[0]}); run teacher-cache on this QA file first")
    if rank == 0:
        rows = build_student_data(pairs, retrieve, out_dir, config)
    if world > 1:
        dist.barrier()
        rows = build_student_data(pairs, retrieve, out_dir, config) if rank else rows
    tok = student.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    encoded = [encode_student(tok, r, config.max_length) for r in rows]
    targets = [cache.get(p.key) for p in pairs]
    for p, e, (idx, _) in zip(pairs, encoded, targets):
        if idx.shape[0] != e.answer_len:
            raise ValueError(f"pair {p.key}: the cache holds {idx.shape[0]} answer tokens, the student "
                             f"sequence has {e.answer_len} (was the QA file edited after caching?)")
    n = len(pairs)
    steps_per_epoch = math.ceil(n / config.batch_size)
    total = config.steps or max(1, math.ceil(config.epochs * steps_per_epoch))

    params = student.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(config.warmup_ratio * total), total)
    start = _load_checkpoint(out_dir, student, optimizer, scheduler)
    module = DistillLoss(student, config, cache.spec.temperature)
    runner = module
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        runner = DDP(module, device_ids=[student.device.index] if student.device.type == "cuda" else None)
    metrics_path = out_dir / METRICS
    history = _read_metrics(metrics_path, upto=start)
    if rank == 0:
        metrics_path.write_text("".join(json.dumps(m) + "\n" for m in history))
    student.model.train()
    bar = progress_bar(total=total, initial=start, desc="distilling", unit="step", disable=not progress or rank)
    t_start = time.perf_counter()
    completed = start
    try:
        for step in range(start, total):
            t0 = time.perf_counter()
            positions = batch_positions(step, config.batch_size, n, config.seed)
            step_tokens = sum(encoded[i].answer_len for i in positions)
            mine = positions[rank::world]
            micro = [mine[i : i + config.micro_batch_size] for i in range(0, len(mine), config.micro_batch_size)]
            optimizer.zero_grad(set_to_none=True)
            local = 0.0
            for m, chunk in enumerate(micro):
                batch = collate([encoded[i] for i in chunk], pad)
                idx = torch.cat([targets[i][0] for i in chunk])
                lp = torch.cat([targets[i][1] for i in chunk])
                sync = m == len(micro) - 1
                ctx = runner.no_sync() if (world > 1 and not sync) else contextlib.nullcontext()
                with ctx:
                    # DDP averages gradients over processes: scale by world to keep the sum.
                    loss = runner(batch, idx, lp, world / step_tokens)
                    loss.backward()
                local += loss.item() / world
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            completed = step + 1
            step_loss = _all_sum(local)
            dt = time.perf_counter() - t0
            record = {"step": step + 1, "loss": step_loss, "lr": scheduler.get_last_lr()[0],
                      "grad_norm": float(grad_norm), "tokens": step_tokens,
                      "tokens_per_s": step_tokens / dt, "elapsed_s": time.perf_counter() - t_start}
            history.append(record)
            if rank == 0:
                with open(metrics_path, "a") as fh:
                    fh.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
            bar.update(1)
            if on_step is not None:
                on_step(step + 1, step_loss)
            if (step + 1) % config.checkpoint_every == 0 and (step + 1) < total and rank == 0:
                _save_checkpoint(out_dir, student, optimizer, scheduler, step + 1, config)
    except KeyboardInterrupt:
        if rank == 0 and completed > start:
            _save_checkpoint(out_dir, student, optimizer, scheduler, completed, config)
            log.warning("interrupted after step %d: checkpoint saved, rerun to resume", completed)
        raise
    finally:
        bar.close()
    summary = {"steps": total, "resumed_from": start, "examples": n, "first_loss": history[0]["loss"] if history else None,
               "last_loss": history[-1]["loss"] if history else None, "world_size": world,
               "train": asdict(config), "cache": str(cache_dir), "teacher_d": cache.spec.d}
    if rank == 0:
        student.save_adapter(out_dir, {"user": user, "training": summary})
        _plot(history, out_dir / LOSS_PLOT)
        shutil.rmtree(out_dir / CHECKPOINT, ignore_errors=True)
    if world > 1:
        dist.barrier()
    return summary


@torch.no_grad()
def evaluate_loss(student, pairs: list[QAPair], cache_dir, rows: list[dict], config: TrainConfig) -> float:
    """Mean top-d KL per answer token over `pairs`, with the student prompts in `rows`."""
    cache = TeacherCache(cache_dir)
    tok = student.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    module = DistillLoss(student, config, cache.spec.temperature)
    was_training = student.model.training
    student.model.eval()
    total, tokens = 0.0, 0
    try:
        for i in range(0, len(pairs), config.micro_batch_size):
            chunk = list(range(i, min(len(pairs), i + config.micro_batch_size)))
            encoded = [encode_student(tok, rows[j], config.max_length) for j in chunk]
            entries = [cache.get(pairs[j].key) for j in chunk]
            batch = collate(encoded, pad)
            total += module(batch, torch.cat([e[0] for e in entries]), torch.cat([e[1] for e in entries]), 1.0).item()
            tokens += sum(e.answer_len for e in encoded)
    finally:
        student.model.train(was_training)
    return total / max(tokens, 1)


def _all_sum(value: float) -> float:
    rank, world = _dist()
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item())


def _read_metrics(path: Path, upto: int) -> list[dict]:
    if upto == 0 or not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["step"] <= upto]


def _plot(history: list[dict], path: Path) -> None:
    """The loss curve as a PNG (matplotlib, headless)."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], marker="o", markersize=2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("top-d KL (per answer token)")
    ax.set_title("student distillation loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
