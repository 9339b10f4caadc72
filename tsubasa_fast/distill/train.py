"""Student training: top-d context distillation on ``transformers.Trainer``.

The student (base + LoRA) sees the question plus the top-k memories retrieved from the
user's evolved store; ``TopDDistillationTrainer`` runs its patched forward, whose final
hidden states at the answer-predicting rows go straight into ``fused_linear_topd_kl_loss``
against the cached teacher entries, so the student's logits are never materialised.

What Trainer (accelerate) brings: DDP under ``torchrun`` or ``accelerate launch`` (gloo on
CPU, nccl on CUDA), gradient accumulation, the schedule, checkpoints and resume, logging
integrations. What is ours: the loss of a step is the sum over its answer tokens divided by
their number over the whole step (all micro-batches, all ranks; Trainer's
``num_items_in_batch``), so accumulation and DDP give the gradient of one process with the
whole batch; a checkpoint counts only once completely written; Ctrl-C (or SIGTERM) finishes
the current step, saves a checkpoint and stops; a rerun resumes from the newest complete
checkpoint and reproduces the uninterrupted run, and a rerun after a finished training
(a crash while answering, a second evaluation) loads the adapter instead of training again
when everything it was trained from is unchanged (``inputs_sha256`` in its metadata).
``metrics.jsonl`` gets one line per step, ``loss.png`` the curve, the adapter its metadata
(user, base-model fingerprint).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
from transformers import TrainerCallback

from ..errors import InputError
from ..fileio import atomic_write_text
from ..progress import progress_bar
from .cache import CacheSpec, TeacherCache, read_cache_spec
from .configs import TrainConfig  # noqa: F401 (re-exported)
from .data import Encoded, QAPair, encode
from .prompts import TEMPLATE_VERSION, student_messages, without_hint
from .student import ADAPTER_META, adapter_meta

log = logging.getLogger(__name__)
CHECKPOINTS = "checkpoints"
STUDENT_DATA = "student_data.jsonl"
METRICS = "metrics.jsonl"
LOSS_PLOT = "loss.png"


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
        # retrieval searches the question as eval qa does, without the abstention hint
        memories = retrieve(without_hint(p.question)) if (config.grounding and retrieve is not None) else None
        rows.append({"key": p.key, "question": p.question, "answer": p.answer, "memories": memories})
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def encode_student(tokenizer, row: dict, max_length: int) -> Encoded:
    return encode(tokenizer, student_messages(row["memories"], row["question"]), row["answer"], max_length)


def student_examples(tokenizer, rows: list[dict], pairs: list[QAPair], cache: TeacherCache,
                     max_length: int, stats: dict | None = None) -> list[dict]:
    """One ``TopDDataCollator`` example per pair: the student sequence, its answer-predicting
    rows as ``teacher_mask`` and the cached teacher entries of those rows. ``stats["truncated"]``
    counts the prompts cut to ``max_length``."""
    out = []
    for p, row in zip(pairs, rows):
        e = encode_student(tokenizer, row, max_length)
        if stats is not None:
            stats["truncated"] = stats.get("truncated", 0) + (e.truncated > 0)
        idx, lp = cache.get(p.key)
        if idx.shape[0] != e.answer_len:
            raise InputError(f"pair {p.key}: the cache holds {idx.shape[0]} answer tokens, the student "
                             f"sequence has {e.answer_len} (was the QA file edited after caching?)",
                             field="qa")
        mask = torch.zeros(len(e.input_ids), dtype=torch.bool)
        mask[e.target_rows] = True
        out.append({"input_ids": e.input_ids, "teacher_mask": mask, "teacher_indices": idx,
                    "teacher_logprobs": lp})
    return out


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _micro_batch(per_rank: int, limit: int) -> int:
    """The largest micro-batch <= ``limit`` that divides a rank's share of the step, so every
    step has exactly ``batch_size`` examples (the loss does not depend on the split)."""
    return max(m for m in range(1, min(per_rank, limit) + 1) if per_rank % m == 0)


# ------------------------------------------------------------------------ callbacks


def epoch_losses(history: list[dict], steps_per_epoch: int) -> tuple[float | None, float | None]:
    """The answer-token-weighted mean loss of the first and of the last ``steps_per_epoch`` steps of
    ``history`` (metrics.jsonl records): one step's loss is one batch's, so it moves with the batch;
    over an epoch it shows the learning. None where a step of the span has no record or no tokens."""
    by_step = {m["step"]: m for m in history}
    last = max(by_step, default=0)

    def mean(steps) -> float | None:
        rows = [by_step.get(s) for s in steps]
        if not rows or any(r is None for r in rows) or not sum(r["tokens"] for r in rows):
            return None
        return round(sum(r["loss"] * r["tokens"] for r in rows) / sum(r["tokens"] for r in rows), 4)

    span = min(steps_per_epoch, last)
    return mean(range(1, span + 1)), mean(range(last - span + 1, last + 1))


def describe_loss(summary: dict) -> str:
    """Training's loss as reports print it: the first and the last epoch's mean (one step's loss is
    one batch's), else the first and the last step's (a summary from before the epoch means)."""
    if summary.get("first_epoch_loss") is not None and summary.get("last_epoch_loss") is not None:
        return (f"{summary['first_epoch_loss']:.4f} -> {summary['last_epoch_loss']:.4f} "
                "(mean of the first and the last epoch)")
    if summary.get("first_loss") is None:
        return "unknown"
    return f"{summary['first_loss']:.4f} -> {summary['last_loss']:.4f} (first and last step)"


class _Metrics(TrainerCallback):
    """One ``metrics.jsonl`` line per optimizer step (world process zero); ``on_step(step, loss)``."""

    def __init__(self, path: Path, on_step: Callable[[int, float], None] | None):
        self.path, self.on_step = path, on_step
        self.history: list[dict] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.history = _read_metrics(self.path, upto=state.global_step)
        if state.is_world_process_zero:  # drops the lines of steps after the checkpoint
            atomic_write_text(self.path, "".join(json.dumps(m) + "\n" for m in self.history))
        self.t_start = self.t_last = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        now = time.perf_counter()
        tokens = logs.get("answer_tokens", 0)
        record = {"step": state.global_step, "loss": logs["loss"], "lr": logs.get("learning_rate"),
                  "grad_norm": logs.get("grad_norm"), "tokens": tokens,
                  "tokens_per_s": tokens / max(now - self.t_last, 1e-9), "elapsed_s": now - self.t_start}
        self.t_last = now
        self.history.append(record)
        if state.is_world_process_zero:
            with open(self.path, "a") as fh:  # an append-only log; resume rewrites it atomically
                fh.write(json.dumps(record) + "\n")
        if self.on_step is not None:
            self.on_step(state.global_step, logs["loss"])


class _StopOnSignal(TrainerCallback):
    """SIGINT / SIGTERM: finish the current step, save a checkpoint, stop (all ranks agree);
    a second signal interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("interrupted: finishing the current step, then saving a checkpoint (again to stop now)")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        stop = self.requested
        if args.world_size > 1:
            flag = torch.tensor([int(stop)], device=args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            stop = bool(flag.item())
        if stop:
            self.requested = True
            control.should_save = control.should_training_stop = True
        return control


class _NoFinalCheckpoint(TrainerCallback):
    """The adapter is saved at the end; a last checkpoint would only be deleted."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = False
        return control


# ------------------------------------------------------------------------ a finished training


def inputs_digest(student, rows: list[dict], cache_dir, config: TrainConfig, world: int, steps: int) -> str:
    """sha256 of everything a training's result depends on: the base model and tokenizer, the
    student and training configs, the number of processes and steps, the student prompts
    (pair keys hash question, answer and context) and the teacher cache's files."""
    h = hashlib.sha256()
    student_cfg = {k: v for k, v in asdict(student.config).items() if k != "extra"}
    h.update(json.dumps({"base": student.fingerprint, "tokenizer": student.tokenizer_hash,
                         "student": student_cfg, "train": asdict(config), "world": world,
                         "steps": steps, "template": TEMPLATE_VERSION, "rows": rows},
                        sort_keys=True, default=str).encode())
    cache_dir = Path(cache_dir)
    for f in sorted(p for p in cache_dir.rglob("*") if p.is_file()):
        h.update(f.relative_to(cache_dir).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _finished_training(student, out_dir: Path, digest: str) -> dict | None:
    """The summary of a finished training of these inputs in ``out_dir``, its adapter loaded
    into the student; None when there is none (or it was trained from something else)."""
    if not (out_dir / ADAPTER_META).is_file():
        return None
    done = adapter_meta(out_dir).get("training") or {}
    if done.get("inputs_sha256") != digest:
        return None
    student.load_adapter_weights(out_dir)
    log.info("training already finished for these inputs: adapter loaded from %s", out_dir)
    return {**done, "reused": True}


# ------------------------------------------------------------------------ training


def _checked_cache(student, cache_dir) -> TeacherCache:
    built = read_cache_spec(cache_dir)  # d and temperature are the cache's to choose
    expect = CacheSpec(model_fingerprint=student.fingerprint, tokenizer_hash=student.tokenizer_hash,
                       vocab_size=student.vocab_size, d=built.d, temperature=built.temperature,
                       template_version=TEMPLATE_VERSION, logprob_dtype=built.logprob_dtype)
    return TeacherCache(cache_dir, expect=expect)


def train(student, pairs: list[QAPair], cache_dir, out_dir, config: TrainConfig,
          retrieve: Callable[[str], list[str]] | None = None, progress: bool = True,
          on_step: Callable[[int, float], None] | None = None, user: str | None = None) -> dict:
    """Trains the student's adapter into ``out_dir``; returns a summary. Resumes from the
    newest complete checkpoint in ``out_dir/checkpoints``.

    ``user`` is recorded in the adapter's metadata; answering refuses another user's adapter.
    Under ``torchrun`` every process calls this; rank 0 writes the files.
    """
    from accelerate import PartialState
    from transformers import TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from ..integrations import ProgressBarCallback, TopDDataCollator, TopDDistillationTrainer
    from ..integrations.trainer import checkpoint_step, last_complete_checkpoint, zero_weight_examples

    config.validate()
    world = PartialState(cpu=student.device.type == "cpu").num_processes  # the CLI may have made it
    if config.batch_size % world:
        raise InputError(f"({config.batch_size}) must be a multiple of the number of processes "
                         f"({world})", field="batch_size")
    micro = _micro_batch(config.batch_size // world, config.micro_batch_size)
    if micro != config.micro_batch_size:
        log.info("micro-batch %d (divides the %d examples per process and step)", micro,
                 config.batch_size // world)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = _checked_cache(student, cache_dir)
    missing = [p.key for p in pairs if p.key not in cache]
    if missing:
        raise InputError(f"{len(missing)} QA pairs are not in the teacher cache {cache_dir} "
                         f"(first: {missing[0]}); run teacher-cache on this QA file first", field="cache")
    n = len(pairs)
    total = config.steps or max(1, math.ceil(config.epochs * math.ceil(n / config.batch_size)))
    args = TrainingArguments(
        output_dir=str(out_dir / CHECKPOINTS), max_steps=total, per_device_train_batch_size=micro,
        gradient_accumulation_steps=config.batch_size // (world * micro), learning_rate=config.lr,
        weight_decay=config.weight_decay, lr_scheduler_type="cosine",
        warmup_steps=int(config.warmup_ratio * total), max_grad_norm=config.max_grad_norm,
        optim="adamw_torch", seed=config.seed, data_seed=config.seed, logging_steps=1,
        logging_nan_inf_filter=False, save_strategy="steps", save_steps=config.checkpoint_every,
        save_total_limit=1, report_to=config.report_to, disable_tqdm=True, remove_unused_columns=False,
        dataloader_pin_memory=False, use_cpu=student.device.type == "cpu")
    with args.main_process_first(desc="student prompts"):  # rank 0 retrieves, the others read
        rows = build_student_data(pairs, retrieve, out_dir, config)
    digest = inputs_digest(student, rows, cache_dir, config, world, total)
    finished = _finished_training(student, out_dir, digest)
    if finished is not None:
        return finished
    counts = {"truncated": 0}
    examples = student_examples(student.tokenizer, rows, pairs, cache, config.max_length, counts)
    # accelerate's even_batches would repeat examples to fill the last micro-batches of an
    # epoch (trained on twice); zero-weight examples fill them instead and change no gradient
    padded = (-n) % (micro * world) if world > 1 else 0
    if padded:
        log.info("%d examples over %d processes x micro-batch %d: %d zero-weight examples pad "
                 "every epoch", n, world, micro, padded)
        examples += zero_weight_examples(examples[0], padded, _pad_id(student.tokenizer))
    metrics = _Metrics(out_dir / METRICS, on_step)
    stopper = _StopOnSignal()
    callbacks = [metrics, stopper, _NoFinalCheckpoint()] + ([ProgressBarCallback("distilling")] if progress else [])
    trainer = TopDDistillationTrainer(
        model=student.model, args=args, train_dataset=examples, callbacks=callbacks,
        data_collator=TopDDataCollator(_pad_id(student.tokenizer)),
        topd_kl={"tail": config.tail, "temperature": cache.spec.temperature, "ce_weight": config.ce_weight})
    trainer.remove_callback(PrinterCallback)  # it prints every log line
    resume = last_complete_checkpoint(args.output_dir)
    start = checkpoint_step(resume) if resume is not None else 0
    with stopper:
        trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    done = trainer.state.global_step
    if done < total:
        log.warning("stopped after step %d of %d: checkpoint saved, rerun to resume", done, total)
        raise KeyboardInterrupt
    history = metrics.history
    first_epoch, last_epoch = epoch_losses(history, math.ceil(n / config.batch_size))
    summary = {"steps": total, "resumed_from": start, "examples": n,
               "first_loss": history[0]["loss"] if history else None,
               "last_loss": history[-1]["loss"] if history else None,
               "first_epoch_loss": first_epoch, "last_epoch_loss": last_epoch, "world_size": world,
               "micro_batch_size": micro, "repeated_per_epoch": 0,
               "padded_per_epoch": padded, "truncated": counts["truncated"],
               "train": asdict(config), "cache": str(cache_dir), "teacher_d": cache.spec.d,
               "inputs_sha256": digest}
    if trainer.is_world_process_zero():
        student.save_adapter(out_dir, {"user": user, "training": summary})
        _plot(history, out_dir / LOSS_PLOT)
        shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    return summary


@torch.no_grad()
def evaluate_loss(student, pairs: list[QAPair], cache_dir, rows: list[dict], config: TrainConfig) -> float:
    """Mean top-d KL per answer token over `pairs`, with the student prompts in `rows`."""
    from ..integrations import TopDDataCollator, apply_topd_kl, topd_kl_options

    cache = TeacherCache(cache_dir)
    if topd_kl_options(student.model) is None:
        apply_topd_kl(student.model)
    counts = {"truncated": 0}
    examples = student_examples(student.tokenizer, rows, pairs, cache, config.max_length, counts)
    collate = TopDDataCollator(_pad_id(student.tokenizer))
    was_training = student.model.training
    student.model.eval()
    total, tokens = 0.0, 0
    try:
        for i in range(0, len(examples), config.micro_batch_size):
            batch = {k: v.to(student.device) for k, v in collate(examples[i : i + config.micro_batch_size]).items()}
            out = student.model(**batch, tail=config.tail, temperature=cache.spec.temperature,
                                ce_weight=config.ce_weight, reduction="sum")
            total += out.loss.item()
            tokens += int(batch["teacher_mask"].sum())
    finally:
        student.model.train(was_training)
    return total / max(tokens, 1)


def _read_metrics(path: Path, upto: int) -> list[dict]:
    """The lines of steps <= ``upto`` (a line cut short by a kill is dropped)."""
    if upto == 0 or not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r for r in rows if isinstance(r, dict) and r.get("step", upto + 1) <= upto]


def _plot(history: list[dict], path: Path) -> None:
    """The loss curve as a PNG (matplotlib, headless)."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..fileio import atomic_output

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], marker="o", markersize=2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("top-d KL (per answer token)")
    ax.set_title("student distillation loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
