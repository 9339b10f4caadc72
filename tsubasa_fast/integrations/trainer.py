"""The fused top-d KL on ``transformers.Trainer``: ``TopDDistillationTrainer``, ``TopDKLMixin``
(the same loss for any Trainer subclass, e.g. TRL's) and ``TopDDataCollator``.

The loss of an optimizer step is the sum of the top-d KL over its answer tokens divided by
their number over the whole step: every gradient-accumulation micro-batch and, with
``average_tokens_across_devices`` (the default), every rank. That count is Trainer's own
``num_items_in_batch``: it counts the ``labels`` the collator sets at the answer tokens
(exactly the ``teacher_mask`` positions, shifted by one), gathers it over ranks and hands it
to ``compute_loss``; the patched forward divides its sum by it. DDP then averages the
gradients over ranks, so the loss is multiplied by the number of processes, as Trainer does.

Checkpoints stay Trainer's (``checkpoint-N`` folders, resumed by ``train(resume_from_checkpoint=...)``),
but Trainer writes them in place, so a kill mid-save leaves a folder that looks like any
other. Here a checkpoint counts only once ``CHECKPOINT_COMPLETE`` is in it, written (fsynced,
atomically) after every rank has written its files; ``resume_from_checkpoint=True`` takes the
newest complete one, unfinished ones are deleted, and ``save_total_limit`` rotation runs
only after the new checkpoint is complete, so the last good checkpoint is never lost.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..errors import InputError
from ..fileio import atomic_write_text, fsync_tree
from ..ops.reference import IGNORE_INDEX
from ..progress import progress_bar
from .hf import TEACHER_ARGS, apply_topd_kl, topd_kl_options

CHECKPOINT_COMPLETE = "tsubasa_checkpoint_complete.json"
_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


# --------------------------------------------------------------------------- the collator


@dataclass
class TopDDataCollator:
    """Right-pads examples into the batch the patched forward takes.

    An example is a dict with ``input_ids`` (T,), ``teacher_mask`` (T,) bool (True at
    position t: the teacher's distribution of token t+1 is given), ``teacher_indices`` and
    ``teacher_logprobs`` with one row per True position, (teacher_mask.sum(), d) as our
    teacher cache stores them, or per position, (T, d); ``attention_mask`` is optional. The
    batch has ``input_ids``, ``attention_mask``, ``teacher_indices``, ``teacher_logprobs``
    ((B, T, d)), ``teacher_mask`` and ``labels`` (the next token at the teacher positions,
    -100 elsewhere): Trainer counts the labels for ``num_items_in_batch``, and they are the CE
    targets when ``ce_weight > 0``. ``pad_token_id`` never changes the loss (padding is on
    the right, masked out and never a target).
    """

    pad_token_id: int = 0
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise InputError("an empty batch", field="features")
        rows = [_example(i, f) for i, f in enumerate(features)]
        d = rows[0][2].shape[1]
        for i, (_, _, idx, _, _) in enumerate(rows):
            if idx.shape[1] != d:
                raise InputError(f"example {i} has d = {idx.shape[1]} teacher entries per position, "
                                 f"example 0 has {d}", field="teacher_indices")
        width = max(len(r[0]) for r in rows)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        n = len(rows)
        ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        attn = torch.zeros(n, width, dtype=torch.long)
        mask = torch.zeros(n, width, dtype=torch.bool)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        t_idx = torch.zeros(n, width, d, dtype=rows[0][2].dtype)
        t_lp = torch.zeros(n, width, d, dtype=rows[0][3].dtype)
        for i, (x, m, idx, lp, a) in enumerate(rows):
            t = len(x)
            ids[i, :t], attn[i, :t], mask[i, :t] = x, a, m
            if idx.shape[0] == t:  # one row per position
                t_idx[i, :t], t_lp[i, :t] = idx, lp
            else:  # one row per teacher position
                t_idx[i, :t][m], t_lp[i, :t][m] = idx, lp
            nxt = torch.zeros(t, dtype=torch.bool)
            nxt[1:] = m[:-1]
            labels[i, :t][nxt] = x[nxt]
        return {"input_ids": ids, "attention_mask": attn, "teacher_indices": t_idx,
                "teacher_logprobs": t_lp, "teacher_mask": mask, "labels": labels}


def zero_weight_examples(like: dict, count: int, pad_token_id: int = 0) -> list[dict]:
    """``count`` examples that weigh nothing: two ``pad_token_id`` tokens, ``teacher_mask``
    all False, no teacher rows (d and dtypes as in ``like``). They add no loss rows and no
    answer tokens (no labels, so none in ``num_items_in_batch``): padding a dataset with them
    changes no gradient, e.g. to split it evenly over processes x micro-batch."""
    idx, lp = torch.as_tensor(like["teacher_indices"]), torch.as_tensor(like["teacher_logprobs"])
    return [{"input_ids": torch.full((2,), pad_token_id, dtype=torch.long),
             "teacher_mask": torch.zeros(2, dtype=torch.bool),
             "teacher_indices": idx.new_zeros((0, idx.shape[-1])),
             "teacher_logprobs": lp.new_zeros((0, lp.shape[-1]))} for _ in range(count)]


def _example(i: int, f: dict):
    missing = [k for k in ("input_ids", *TEACHER_ARGS) if k not in f]
    if missing:
        raise InputError(f"example {i} has no {missing[0]!r}", field=missing[0])
    x = torch.as_tensor(f["input_ids"], dtype=torch.long)
    if x.dim() != 1 or len(x) < 2:
        raise InputError(f"example {i}: expected a 1-D sequence of at least 2 tokens, got shape "
                         f"{tuple(x.shape)}", field="input_ids")
    t = len(x)
    m = torch.as_tensor(f["teacher_mask"])
    if m.dtype != torch.bool or tuple(m.shape) != (t,):
        raise InputError(f"example {i}: expected a bool sequence as long as input_ids ({t}), got "
                         f"{m.dtype} {tuple(m.shape)}", field="teacher_mask")
    if bool(m[-1]):
        raise InputError(f"example {i}: True at the last position, which has no next token to "
                         "predict", field="teacher_mask")
    idx = torch.as_tensor(f["teacher_indices"])
    lp = torch.as_tensor(f["teacher_logprobs"])
    if idx.is_floating_point() or idx.dim() != 2 or idx.shape[0] not in (int(m.sum()), t):
        raise InputError(f"example {i}: expected integer (teacher_mask.sum() = {int(m.sum())} or T = {t}, d), "
                         f"got {idx.dtype} {tuple(idx.shape)}", field="teacher_indices")
    if not lp.is_floating_point() or lp.shape != idx.shape:
        raise InputError(f"example {i}: expected floats shaped like teacher_indices {tuple(idx.shape)}, "
                         f"got {lp.dtype} {tuple(lp.shape)}", field="teacher_logprobs")
    a = torch.as_tensor(f.get("attention_mask", torch.ones(t)), dtype=torch.long)
    if tuple(a.shape) != (t,):
        raise InputError(f"example {i}: expected shape ({t},), got {tuple(a.shape)}", field="attention_mask")
    return x, m, idx, lp, a


# --------------------------------------------------------------------------- checkpoints


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """N of a ``checkpoint-N`` folder name, else None."""
    match = _CHECKPOINT_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    return (Path(path) / CHECKPOINT_COMPLETE).is_file()


def _checkpoints(output_dir) -> list[tuple[int, Path]]:
    folder = Path(output_dir)
    found = [(checkpoint_step(p), p) for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
    return sorted((s, p) for s, p in found if s is not None)


def last_complete_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest ``checkpoint-N`` in ``output_dir`` that was completely written, or None."""
    complete = [p for _, p in _checkpoints(output_dir) if is_complete_checkpoint(p)]
    return complete[-1] if complete else None


def _mark_complete(folder: Path, step: int) -> None:
    """fsyncs every file of the checkpoint, then writes the marker (atomically, last)."""
    fsync_tree(folder)
    atomic_write_text(folder / CHECKPOINT_COMPLETE, json.dumps({"step": step}) + "\n")


# --------------------------------------------------------------------------- the mixin


class TopDKLMixin:
    """The fused top-d KL as the loss of any ``transformers.Trainer`` subclass: put it first,
    ``class MyTrainer(TopDKLMixin, trl.SFTTrainer)``, and feed it ``TopDDataCollator`` batches.

    ``topd_kl``: options for ``apply_topd_kl`` (tail, temperature, ce_weight, backend,
    chunk_size); the model is patched here unless it already is and ``topd_kl`` is None.
    """

    def __init_subclass__(cls, **kwargs):
        """Refuses a class whose Trainer base comes first: its own compute_loss would win and
        silently train plain cross-entropy instead of the top-d KL."""
        super().__init_subclass__(**kwargs)
        for klass in cls.__mro__[1:]:
            if klass is TopDKLMixin:
                break
            if "compute_loss" in vars(klass):
                raise TypeError(f"{cls.__name__}: put TopDKLMixin before {klass.__name__} in the bases "
                                f"(class {cls.__name__}(TopDKLMixin, {klass.__name__})), or its compute_loss "
                                "replaces the top-d KL")

    def __init__(self, *args, topd_kl: dict | None = None, **kwargs):
        model = kwargs.get("model", args[0] if args else None)
        if model is None:
            raise InputError("is required (model_init is not supported)", field="model")
        options = topd_kl_options(model)
        if topd_kl is not None or options is None:
            apply_topd_kl(model, **(topd_kl or {}))
            options = topd_kl_options(model)
        if options["reduction"] != "mean":
            raise InputError(f"must be 'mean' for training (the sum over the step's answer tokens / "
                             f"their number), got {options['reduction']!r}", field="reduction")
        super().__init__(*args, **kwargs)
        # the patched forward takes num_items_in_batch: Trainer counts the labels for it
        self.model_accepts_loss_kwargs = True
        if self.args.world_size > 1 and not self.args.average_tokens_across_devices:
            raise InputError("must be True with several processes: the loss is normalised by the "
                             "answer tokens of all ranks", field="average_tokens_across_devices")
        self._topd_step_items = None
        self._topd_answer_tokens = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The patched forward's top-d KL: sum / ``num_items_in_batch`` (see the module docstring)."""
        missing = [name for name in TEACHER_ARGS if name not in inputs]
        if missing:
            raise InputError(f"the batch has no {missing[0]!r}; build batches with TopDDataCollator",
                             field=missing[0])
        if model.training and num_items_in_batch is None:
            raise InputError("Trainer passed no num_items_in_batch: batches need `labels` at the "
                             "answer tokens (TopDDataCollator sets them), so the loss can be divided "
                             "by the answer tokens of the whole step", field="labels")
        extra = {} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch}
        outputs = model(**inputs, **extra)
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs[0]
        if num_items_in_batch is not None:
            if model.training and num_items_in_batch is not self._topd_step_items:
                # Trainer hands every micro-batch of one optimizer step the same count
                self._topd_step_items = num_items_in_batch
                self._topd_answer_tokens = self._topd_answer_tokens + num_items_in_batch
            if self.args.average_tokens_across_devices:
                # DDP averages gradients over ranks; the count is global: undo the average
                scale = self.accelerator.num_processes // self.get_tp_size()
                loss = loss * (scale if self.args.n_gpu <= 1 else self.args.n_gpu)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        """Training logs gain ``answer_tokens``: the answer tokens (all ranks) since the last log."""
        if "loss" in logs and self.model.training:
            logs["answer_tokens"] = int(self._topd_answer_tokens)
            self._topd_answer_tokens = 0
        super().log(logs, *args, **kwargs)

    def train(self, resume_from_checkpoint=None, **kwargs):
        """Trainer.train; ``resume_from_checkpoint=True`` takes the newest complete checkpoint."""
        out = self.args.output_dir
        if resume_from_checkpoint is True:
            found = last_complete_checkpoint(out)
            if found is None:
                raise InputError(f"no complete checkpoint in {out}", field="resume_from_checkpoint")
            resume_from_checkpoint = str(found)
        if self.args.should_save:
            for _, path in _checkpoints(out):
                if not is_complete_checkpoint(path) and Path(path) != Path(resume_from_checkpoint or ""):
                    shutil.rmtree(path, ignore_errors=True)  # a save that was cut short
        self.accelerator.wait_for_everyone()
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _save_checkpoint(self, model, trial):
        limit = self.args.save_total_limit
        self.args.save_total_limit = None  # rotate below, once the new checkpoint is complete
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()  # every rank has written its files (RNG states)
        if not self.args.should_save:
            return
        run_dir = Path(self._get_output_dir(trial=trial))
        step = self.state.global_step
        _mark_complete(run_dir / f"{PREFIX_CHECKPOINT_DIR}-{step}", step)
        keep = {Path(self.state.best_model_checkpoint)} if self.state.best_model_checkpoint else set()
        complete = [p for s, p in _checkpoints(run_dir) if is_complete_checkpoint(p) and s <= step]
        old = complete[: -limit] if limit else []
        old += [p for s, p in _checkpoints(run_dir) if s < step and not is_complete_checkpoint(p)]
        for path in old:
            if path not in keep:
                shutil.rmtree(path, ignore_errors=True)


class ProgressBarCallback(TrainerCallback):
    """Training progress through ``tsubasa_fast.progress``: a live bar on a terminal, a line a
    minute in a log (Trainer's own bar redraws, and with ``disable_tqdm`` prints every log)."""

    def __init__(self, desc: str = "training"):
        self.desc = desc
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = progress_bar(total=state.max_steps, initial=state.global_step, desc=self.desc,
                                    unit="step")

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs and "loss" in logs:
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}", refresh=False)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class TopDDistillationTrainer(TopDKLMixin, Trainer):
    """``transformers.Trainer`` training a causal LM (bare or peft) on the fused top-d KL.

    Batches come from ``TopDDataCollator`` (the default ``data_collator``); Trainer's tqdm bar
    becomes ``ProgressBarCallback`` (quiet in logs). Everything else is Trainer's: accelerate
    (DDP, FSDP, DeepSpeed), accumulation, mixed precision, checkpoints, logging integrations.
    """

    def __init__(self, *args, **kwargs):
        if kwargs.get("data_collator") is None and len(args) < 3:
            kwargs["data_collator"] = TopDDataCollator()
        super().__init__(*args, **kwargs)
        if not self.args.disable_tqdm:
            self.remove_callback(ProgressCallback)
            self.add_callback(ProgressBarCallback())
