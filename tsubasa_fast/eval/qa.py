"""LoCoMo QA evaluation (``tsubasa-fast eval qa``): build memory, (distil,) answer, score.

Methods:

* ``rag-utterances``: raw turns in a store (static manager); the base model answers from the
  top-k retrieved turns.
* ``rag-observations``: the dataset's observations (static manager); base model + top-k.
* ``rag-evolved``: the evolved store (the dataset's observations through the rule manager);
  base model + top-k. The same memory, k, prompt and decoding as ``tsubasa``.
* ``tsubasa``: the evolved store, QA synthesised from both speakers' memories, ONE LoRA
  adapter distilled per conversation on the union of both speakers' pairs; base + adapter
  answers from the top-k. Each question is also answered with the adapter off, so the result
  carries the paired ``rag_evolved`` scores and ``distillation_gain`` = tsubasa - rag_evolved.

``closed_book`` answers from the question alone (what the weights hold); ``seeds`` repeats the
run with seeds ``seed, seed + 1, ...`` and reports the mean, the standard deviation and each
seed's overall scores.

Retrieval is the retrieval evaluation's default: both speakers' memories ranked in one pool
(``memory.retrieval.search_conversation``). Scores come from :mod:`.metrics`; category 5 is scored with the adversarial rule and
reported separately. Everything is written under ``work_dir`` for inspection.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from ..distill.prompts import ABSTAIN_ANSWER, ABSTAIN_HINT, with_hint
from ..errors import InputError, StageError
from ..progress import progress_bar
from ..run_config import METHODS, RunConfig  # noqa: F401  (METHODS re-exported)
from .metrics import CATEGORY_NAMES, adversarial_correct, aggregate_scores, score_answer

EVOLVED_MANAGER = "rule"  # the evolution manager behind the rag-evolved and tsubasa stores
JUDGE_PROMPT = (
    "Your task is to label an answer to a question as 'CORRECT' or 'WRONG'. You are given a question, "
    "a gold (ground truth) answer and a generated answer. Be generous: if the generated answer touches "
    "on the same topic as the gold answer, or refers to the same date or time period even in another "
    "format, count it as CORRECT.\n\nQuestion: {question}\nGold answer: {gold}\nGenerated answer: "
    "{prediction}\n\nReply with one word: CORRECT or WRONG.")


def _judge_fn(path: str, device: str | None) -> Callable[[str, str, str], int | None]:
    """``judge(question, gold, prediction) -> 1 / 0`` (None when the reply names neither label)."""
    from ..llm import ChatLM

    lm = ChatLM.load(path, device=device, max_new_tokens=8)

    def judge(question: str, gold: str, prediction: str) -> int | None:
        reply = lm([{"role": "user", "content": JUDGE_PROMPT.format(
            question=question, gold=gold, prediction=prediction)}]).upper()
        m = re.search(r"\b(CORRECT|WRONG)\b", reply)
        return None if m is None else int(m.group(1) == "CORRECT")

    return judge


class QAEvaluator:
    """Runs one method over LoCoMo conversations; :meth:`run` returns the result dict."""

    def __init__(self, config: RunConfig, echo: Callable[[str], None] = print):
        self.config = config
        self.echo = echo
        self.work = Path(config.eval.work_dir or tempfile.mkdtemp(prefix="tsubasa-eval-qa-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.seconds: dict[str, float] = {}
        self.notes: list[str] = []
        self._base = None
        # the base model's greedy answer per prompt: the same store, prompt and weights give the same
        # answer under every seed, so a later seed reuses it instead of generating it again
        self._base_answers: dict[str, str] = {}

    # ------------------------------------------------------------------ helpers

    def _time(self, stage: str, t0: float) -> None:
        self.seconds[stage] = round(self.seconds.get(stage, 0.0) + time.perf_counter() - t0, 2)

    def _student(self, config: RunConfig, fresh: bool = False):
        from ..distill.student import Student

        if fresh or self._base is None:
            t0 = time.perf_counter()
            st = Student(config.student)
            self._time("load", t0)
            if fresh:
                return st
            self._base = st
        return self._base

    @staticmethod
    def _base_chat(student, max_new_tokens: int) -> Callable[[list[dict]], str]:
        from ..llm import ChatLM

        return ChatLM(student.model, student.tokenizer, max_new_tokens=max_new_tokens, adapter_off=True)

    def _build_store(self, conv, path: Path):
        from ..memory.evolution import make_manager
        from ..memory.ingest import ingest_conversation
        from ..memory.store import open_store

        method = self.config.eval.method
        source = "utterances" if method == "rag-utterances" else "observations"
        manager = make_manager(EVOLVED_MANAGER if method in ("tsubasa", "rag-evolved") else "static")
        store = open_store(path, self.config.memory.embedder)
        # as `memory ingest`: the session date prefixes raw utterances only; rag-observations is
        # the dataset's observations alone (no uncited turns)
        stats = ingest_conversation(store, conv, source, manager, date_prefix=source == "utterances",
                                    uncited_turns=method != "rag-observations")
        return store, stats

    def _dated(self, conv, hit) -> str:
        """The memory text, prefixed with its session's date when the store did not prefix it
        (observations): temporal questions need the date, and the answerer sees no other clock."""
        if not self.config.eval.date_in_prompt or hit.text.startswith("[") or not hit.dia_ids:
            return hit.text
        m = re.match(r"D(\d+):", hit.dia_ids[0])
        try:
            return f"[{conv.session(int(m.group(1))).date_str}] {hit.text}" if m else hit.text
        except KeyError:
            return hit.text

    # ------------------------------------------------------------------ tsubasa distillation

    def _distil(self, conv, store, conv_dir: Path, retrieve: Callable[[str], list[str]], c: RunConfig):
        """Synthesise QA for both speakers, cache the teacher, train one adapter; returns the student."""
        from ..distill.stages import qa_stage, teacher_stage, train_stage

        student = self._student(c, fresh=True)
        t0 = time.perf_counter()
        chat = self._base_chat(student, c.synth.max_new_tokens)
        try:
            # the writer, its filters and the teacher see each memory as the student is shown it (dated)
            pairs, report = qa_stage(store, [u for u in conv.user_ids if store.count(u)], chat, c.synth, retrieve,
                                     c.answer.k, conv_dir, text_of=lambda r, _conv=conv: self._dated(_conv, r))
        except StageError as e:
            raise StageError(f"{conv.sample_id}: {e}") from None
        self._time("synth", t0)
        t0 = time.perf_counter()
        teacher_stage(student, conv_dir, c.teacher)
        self._time("teacher", t0)
        t0 = time.perf_counter()
        summary = train_stage(student, conv_dir, c.train, retrieve, f"{conv.sample_id}:*")
        self._time("train", t0)
        student.model.eval()
        return student, {"pairs": len(pairs), "evidence_in_topk": report["evidence_in_topk"],
                         "abstain": report.get("abstain"), **summary}

    # ------------------------------------------------------------------ main loop

    def run(self, conversations) -> dict:
        """One run per seed (seed, seed + 1, ...); scores are the mean over seeds."""
        c, e = self.config, self.config.eval
        judge = None
        if e.judge:
            t0 = time.perf_counter()
            judge = _judge_fn(e.judge, c.student.device)
            self._time("load", t0)
        runs = []
        for i in range(e.seeds):
            seed = c.seed + i
            root = self.work / e.method if e.seeds == 1 else self.work / e.method / f"seed-{seed}"
            runs.append((seed, *self._run_seed(conversations, c.with_seed(seed), root, judge)))
        return self._result(runs, judge is not None)

    def _run_seed(self, conversations, c: RunConfig, root: Path, judge):
        from ..distill.prompts import student_messages
        from ..llm import ChatLM
        from ..memory.locomo import count_tokens
        from ..memory.retrieval import Retriever, search_conversation

        e, k = c.eval, c.answer.k
        rows: list[dict] = []
        per_conv: dict[str, dict] = {}
        for conv in conversations:
            conv_dir = root / conv.sample_id
            conv_dir.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            store, stats = self._build_store(conv, conv_dir / "store")
            self._time("memory", t0)
            try:
                search = Retriever(store, c.answer.retrieval)

                def retrieve(question: str, _conv=conv, _search=search) -> list[str]:
                    return [self._dated(_conv, h) for h in search_conversation(_search, _conv, question, k)]

                info = {"memory": {**stats.as_dict(), "live_records": store.count()}, "seed": c.seed}
                if e.method == "tsubasa":
                    student, info["distill"] = self._distil(conv, store, conv_dir, retrieve, c)
                else:
                    student = self._student(c)
                lm = ChatLM(student.model, student.tokenizer, max_new_tokens=c.answer.max_new_tokens)
                items = conv.qa[: e.limit] if e.limit else conv.qa
                t0 = time.perf_counter()
                out_rows = []
                for qa in progress_bar(items, desc=f"answer {conv.sample_id}", unit="q"):
                    memories = None if e.closed_book or not c.answer.grounding else retrieve(qa.question)
                    question = with_hint(qa.question) if qa.category == 5 else qa.question
                    messages = student_messages(memories, question)
                    gold = qa.answer if qa.category != 5 else (qa.answer or ABSTAIN_ANSWER)
                    row = {"conversation": conv.sample_id, "question": qa.question, "category": qa.category,
                           "answer": gold, "memories": memories or [],
                           "retrieved_tokens": sum(count_tokens(m) for m in memories or [])}
                    if e.method == "tsubasa":  # the distilled student, then the same base without it
                        row.update(self._scored(lm(messages), gold, qa.category))
                        row["base"] = self._scored(self._base_answer(lm, messages), gold, qa.category)
                    else:
                        row.update(self._scored(self._base_answer(lm, messages), gold, qa.category))
                    row["judge"] = None
                    out_rows.append(row)
                self._time("answer", t0)
            finally:
                store.close()
            if judge is not None:
                t0 = time.perf_counter()
                for row in progress_bar(out_rows, desc=f"judge {conv.sample_id}", unit="q"):
                    if row["category"] != 5:
                        row["judge"] = judge(row["question"], row["answer"], row["prediction"])
                self._time("judge", t0)
            with open(conv_dir / "answers.jsonl", "w") as fh:
                for row in out_rows:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            info["questions"] = len(out_rows)
            per_conv[conv.sample_id] = info
            rows.extend(out_rows)
        return rows, per_conv

    def _base_answer(self, lm, messages) -> str:
        """The base model's (adapter off) answer to ``messages``, generated once per prompt."""
        key = json.dumps([messages, lm.max_new_tokens], sort_keys=True)
        if key not in self._base_answers:
            self._base_answers[key] = lm(messages, adapter=False)
        return self._base_answers[key]

    @staticmethod
    def _scored(prediction: str, gold, category: int) -> dict:
        out = {"prediction": prediction, **score_answer(prediction, gold, category)}
        if category == 5:
            out["adversarial_correct"] = adversarial_correct(prediction)
        return out

    def _result(self, runs: list[tuple[int, list[dict], dict]], judged: bool) -> dict:
        c = self.config
        e, a = c.eval, c.answer
        aggs = [aggregate_scores(rows) for _, rows, _ in runs]
        agg = _mean_aggregate(aggs)
        notes = [
            "scores in percent; overall = categories 1-4; category 5 (adversarial) is reported only under "
            "by_category['5'], scored 100 when the answer contains 'no information available' or "
            "'not mentioned' (its question gets the hint:" + ABSTAIN_HINT + ")",
            (f"closed book: no memories in the answer prompt (the question alone); {e.method} model"
             if e.closed_book else
             f"retrieval: {a.retrieval}, top-{a.k} over both speakers' memories ranked in one pool"
             + ("; memories without a date get their session's date in the prompt" if e.date_in_prompt else "")),
            "f1: Mem0-style set token F1; f1_stemmed: LoCoMo's stemmed F1; bleu1: sentence BLEU-1",
        ]
        if e.method in ("tsubasa", "rag-evolved"):
            notes.append(f"memory: the dataset's observations evolved by the {EVOLVED_MANAGER} manager "
                         "(the same store for tsubasa and rag-evolved)")
        if e.method == "tsubasa":
            notes.append("tsubasa: ONE adapter per conversation, distilled on the union of both speakers' "
                         f"synthesised QA pairs (synth generator {c.synth.generator}); rag_evolved: the same "
                         "questions answered by the base model (adapter off) over the same memories, k, "
                         "prompt and decoding, so distillation_gain = tsubasa - rag_evolved")
        if e.method == "tsubasa" and c.synth.abstain_share > 0:
            notes.append(f"abstention pairs: {c.synth.abstain_share} per kept pair, questions about one speaker "
                         "from the other's facts answered with the category-5 answer, each with the hint, and as "
                         "many hinted copies of answerable pairs (distill.abstain)")
        if e.seeds > 1:
            notes.append(f"seeds {[s for s, _, _ in runs]}: scores are the mean over seeds (overall_std: "
                         "their standard deviation); the seed drives synthesis sampling and training")
        if judged:
            notes.append("judge: categories 1-4 only; replies naming neither CORRECT nor WRONG are not counted")
        if e.limit:
            notes.append(f"limit {e.limit}: only the first {e.limit} questions of each conversation")
        notes.extend(self.notes)
        cfg = asdict(c)
        cfg["eval"]["work_dir"] = str(self.work)
        # the keys of the --json schema before the options moved into the stage configs
        cfg.update({k: cfg["eval"][k] for k in ("method", "judge", "limit", "date_in_prompt", "seeds",
                                                 "closed_book", "work_dir")})
        cfg.update(k=a.k, retrieval=a.retrieval, max_new_tokens=a.max_new_tokens, embedder=c.memory.embedder)
        cfg.update({k: cfg["student"][k] for k in ("model", "device", "load_in_4bit", "lora_r")})
        cfg.update({k: cfg["train"][k] for k in ("steps", "epochs", "batch_size", "micro_batch_size", "lr")})
        cfg.update(synth_generator=c.synth.generator, answer_check=c.synth.check_answerable, d=c.teacher.d)
        all_rows = [r for _, rows, _ in runs for r in rows]
        result = {
            "method": e.method,
            "questions": agg["questions"],
            "overall": agg["overall"],
            "by_category": agg["by_category"],
            "mean_retrieved_tokens": (sum(r["retrieved_tokens"] for r in all_rows) / len(all_rows))
            if all_rows else 0.0,
            "seconds": dict(self.seconds),
            "category_names": {str(k): v for k, v in CATEGORY_NAMES.items()},
            "notes": notes,
            "judge_prompt": JUDGE_PROMPT if judged else None,
            "conversations": runs[0][2] if len(runs) == 1 else {f"seed-{s}": pc for s, _, pc in runs},
            "config": cfg,
            "seeds": [s for s, _, _ in runs],
            "per_seed_overall": [a["overall"] for a in aggs],
            "overall_std": _std([a["overall"] for a in aggs]),
        }
        if e.method == "tsubasa":
            base = _mean_aggregate([aggregate_scores([{**r, **r["base"], "judge": None} for r in rows]) for _, rows, _ in runs])
            result["rag_evolved"] = {"overall": base["overall"], "by_category": base["by_category"]}
            result["distillation_gain"] = {
                k: (None if v is None or base["overall"][k] is None else v - base["overall"][k])
                for k, v in agg["overall"].items()}
        return result


def _mean_aggregate(aggs: list[dict]) -> dict:
    """The per-key mean of several aggregate_scores results (one per seed)."""
    def mean(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    first = aggs[0]
    return {
        "questions": first["questions"],
        "overall": {k: mean([a["overall"][k] for a in aggs]) for k in first["overall"]},
        "by_category": {cat: {k: (row[k] if k == "questions" else mean([a["by_category"][cat][k] for a in aggs]))
                              for k in row} for cat, row in first["by_category"].items()},
    }


def _std(overalls: list[dict]) -> dict:
    """Sample standard deviation per score over seeds (None with one seed or missing scores)."""
    out = {}
    for k in overalls[0]:
        values = [o[k] for o in overalls if o[k] is not None]
        if len(values) < 2:
            out[k] = None
            continue
        m = sum(values) / len(values)
        out[k] = (sum((v - m) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return out


def evaluate_qa(conversations, config: RunConfig, echo: Callable[[str], None] = print) -> dict:
    """Runs ``config.eval.method`` over ``conversations`` and returns the result (see the module docstring)."""
    if not conversations:
        raise InputError("no conversations to evaluate", field="locomo")
    return QAEvaluator(config, echo).run(conversations)


def format_table(result: dict) -> str:
    """Per-category table of f1 / f1_stemmed / bleu1 / judge (percent) plus the overall row."""
    keys = ("f1", "f1_stemmed", "bleu1", "judge")
    head = f"{'category':<18}{'n':>5}" + "".join(f"{k:>12}" for k in keys)
    fmt = lambda v: f"{v:>12.2f}" if v is not None else f"{'-':>12}"
    lines = [f"method {result['method']}", head, "-" * len(head)]
    for cat, row in result["by_category"].items():
        name = f"{cat} {result['category_names'].get(cat, '')}"
        lines.append(f"{name:<18}{row['questions']:>5}" + "".join(fmt(row[k]) for k in keys))
    lines.append("-" * len(head))
    lines.append(f"{'overall (1-4)':<18}{result['questions']:>5}" + "".join(fmt(result['overall'][k]) for k in keys))
    if result.get("seeds") and len(result["seeds"]) > 1:
        lines.append(f"{'std over ' + str(len(result['seeds'])) + ' seeds':<23}"
                     + "".join(fmt(result["overall_std"][k]) for k in keys))
    if "distillation_gain" in result:
        base = result["rag_evolved"]["overall"]
        lines.append(f"{'rag-evolved (1-4)':<23}" + "".join(fmt(base[k]) for k in keys))
        lines.append(f"{'distillation gain':<23}" + "".join(
            f"{v:>+12.2f}" if v is not None else f"{'-':>12}" for v in
            (result["distillation_gain"][k] for k in keys)) + "   (tsubasa - rag-evolved)")
    lines.append(f"mean retrieved tokens per question: {result['mean_retrieved_tokens']:.1f}")
    lines.append("seconds: " + ", ".join(f"{k} {v}" for k, v in result["seconds"].items()))
    return "\n".join(lines)
