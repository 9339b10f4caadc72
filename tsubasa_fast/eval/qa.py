"""LoCoMo QA evaluation (``tsubasa-fast eval qa``): build memory, (distil,) answer, score.

Methods:

* ``rag-utterances``: raw turns in a store (static manager); the base model answers from the
  top-k retrieved turns.
* ``rag-observations``: the dataset's observations (static manager); base model + top-k.
* ``tsubasa``: the evolved store (observations through the rule manager), QA synthesised from
  both speakers' memories, ONE LoRA adapter distilled per conversation on the union of both
  speakers' pairs; base + adapter answers from the top-k.

Retrieval is hybrid over both speakers' stores, merged by score (as the retrieval evaluation
does). Scores come from :mod:`.metrics`; category 5 is scored with the adversarial rule and
reported separately. Everything is written under ``work_dir`` for inspection.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import InputError
from ..progress import progress_bar
from .metrics import CATEGORY_NAMES, adversarial_correct, aggregate_scores, score_answer

METHODS = ("rag-utterances", "rag-observations", "tsubasa")
ADVERSARIAL_HINT = ' If the memories do not say, answer "No information available".'
JUDGE_PROMPT = (
    "Your task is to label an answer to a question as 'CORRECT' or 'WRONG'. You are given a question, "
    "a gold (ground truth) answer and a generated answer. Be generous: if the generated answer touches "
    "on the same topic as the gold answer, or refers to the same date or time period even in another "
    "format, count it as CORRECT.\n\nQuestion: {question}\nGold answer: {gold}\nGenerated answer: "
    "{prediction}\n\nReply with one word: CORRECT or WRONG.")


@dataclass
class QAEvalConfig:
    """Everything ``eval qa`` can be told."""

    method: str = "rag-observations"
    k: int = 3
    model: str | None = None  # local causal LM folder; None = SmolLM2-135M-Instruct
    judge: str | None = None  # local model folder for the LLM judge; None = no judge
    device: str | None = None
    load_in_4bit: bool | None = None
    embedder: str = "minilm"
    retrieval: str = "hybrid"
    limit: int | None = None  # answer only the first N questions per conversation
    max_new_tokens: int = 32
    date_in_prompt: bool = True  # prefix undated memories with their session date in the prompt
    work_dir: str | None = None  # None = a fresh temp dir
    # tsubasa only
    synth_generator: str = "rule"
    answer_check: bool = True
    lora_r: int = 16
    d: int = 5
    steps: int | None = None
    epochs: float = 2.0
    batch_size: int = 8
    micro_batch_size: int = 4
    lr: float = 2e-4
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.method not in METHODS:
            raise InputError(f"expected one of {METHODS}, got {self.method!r}", field="method")
        if self.k < 1:
            raise InputError(f"must be >= 1, got {self.k}", field="k")
        if self.limit is not None and self.limit < 1:
            raise InputError(f"must be >= 1, got {self.limit}", field="limit")


def _judge_fn(path: str, device: str | None) -> Callable[[str, str, str], int | None]:
    """``judge(question, gold, prediction) -> 1 / 0`` (None when the reply names neither label)."""
    from ..llm import ChatLM

    lm = ChatLM.load(path, device=device or "cpu", max_new_tokens=8)

    def judge(question: str, gold: str, prediction: str) -> int | None:
        reply = lm([{"role": "user", "content": JUDGE_PROMPT.format(
            question=question, gold=gold, prediction=prediction)}]).upper()
        m = re.search(r"\b(CORRECT|WRONG)\b", reply)
        return None if m is None else int(m.group(1) == "CORRECT")

    return judge


class QAEvaluator:
    """Runs one method over LoCoMo conversations; :meth:`run` returns the result dict."""

    def __init__(self, config: QAEvalConfig, echo: Callable[[str], None] = print):
        self.config = config
        self.echo = echo
        self.work = Path(config.work_dir or tempfile.mkdtemp(prefix="tsubasa-eval-qa-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.seconds: dict[str, float] = {}
        self.notes: list[str] = []
        self._base = None

    # ------------------------------------------------------------------ helpers

    def _time(self, stage: str, t0: float) -> None:
        self.seconds[stage] = round(self.seconds.get(stage, 0.0) + time.perf_counter() - t0, 2)

    def _student(self, fresh: bool = False):
        from ..distill.student import Student, StudentConfig

        c = self.config
        if fresh or self._base is None:
            t0 = time.perf_counter()
            st = Student(StudentConfig(model=c.model, load_in_4bit=c.load_in_4bit, device=c.device,
                                       lora_r=c.lora_r, lora_alpha=2 * c.lora_r, seed=c.seed))
            self._time("load", t0)
            if fresh:
                return st
            self._base = st
        return self._base

    @staticmethod
    def _base_chat(student, max_new_tokens: int) -> Callable[[list[dict]], str]:
        from ..llm import ChatLM

        def chat(messages: list[dict], max_tokens: int | None = None) -> str:
            lm = ChatLM(student.model, student.tokenizer, max_new_tokens=max_tokens or max_new_tokens)
            with student.model.disable_adapter():
                return lm(messages)

        return chat

    def _build_store(self, conv, path: Path):
        from ..memory.evolution import make_manager
        from ..memory.ingest import ingest_conversation
        from ..memory.store import open_store

        source = "utterances" if self.config.method == "rag-utterances" else "observations"
        manager = make_manager("rule" if self.config.method == "tsubasa" else "static")
        store = open_store(path, self.config.embedder)
        # as `memory ingest`: the session date prefixes raw utterances only
        stats = ingest_conversation(store, conv, source, manager, date_prefix=source == "utterances")
        return store, stats

    def _dated(self, conv, hit) -> str:
        """The memory text, prefixed with its session's date when the store did not prefix it
        (observations): temporal questions need the date, and the answerer sees no other clock."""
        if not self.config.date_in_prompt or hit.text.startswith("[") or not hit.dia_ids:
            return hit.text
        m = re.match(r"D(\d+):", hit.dia_ids[0])
        try:
            return f"[{conv.session(int(m.group(1))).date_str}] {hit.text}" if m else hit.text
        except KeyError:
            return hit.text

    # ------------------------------------------------------------------ tsubasa distillation

    def _distil(self, conv, store, conv_dir: Path, retrieve: Callable[[str], list[str]]):
        """Synthesise QA for both speakers, cache the teacher, train one adapter; returns the student."""
        from ..distill.data import load_qa
        from ..distill.synth import SynthConfig, synthesize, write_qa_jsonl
        from ..distill.teacher import TeacherConfig, build_teacher_cache
        from ..distill.train import TrainConfig, train

        c = self.config
        student = self._student(fresh=True)
        t0 = time.perf_counter()
        chat = self._base_chat(student, 80)
        scfg = SynthConfig(generator=c.synth_generator, check_answerable=c.answer_check, seed=c.seed)
        pairs, reports = [], {}
        for user in conv.user_ids:
            if store.count(user) == 0:
                continue
            got, rep = synthesize(store, user, chat, scfg)
            pairs.extend(got)
            reports[user] = {k: rep[k] for k in ("generated", "kept", "dropped")}
        self._time("synth", t0)
        (conv_dir / "synth.report.json").write_text(json.dumps(reports, indent=1))
        if not pairs:
            self.notes.append(f"{conv.sample_id}: no synthesised QA pair survived the filters; "
                              "answered with the base model")
            return student, {"pairs": 0}
        write_qa_jsonl(conv_dir / "qa.jsonl", pairs)
        qa = load_qa(conv_dir / "qa.jsonl")
        t0 = time.perf_counter()
        build_teacher_cache(student, qa, conv_dir / "cache", TeacherConfig(d=c.d))
        self._time("teacher", t0)
        t0 = time.perf_counter()
        tcfg = TrainConfig(steps=c.steps, epochs=c.epochs, batch_size=c.batch_size,
                           micro_batch_size=min(c.micro_batch_size, c.batch_size), lr=c.lr, k=c.k,
                           retrieval=c.retrieval, seed=c.seed)
        summary = train(student, qa, conv_dir / "cache", conv_dir / "adapter", tcfg, retrieve=retrieve,
                        user=f"{conv.sample_id}:*")
        self._time("train", t0)
        student.model.eval()
        return student, {"pairs": len(qa), "steps": summary["steps"], "first_loss": summary["first_loss"],
                         "last_loss": summary["last_loss"]}

    # ------------------------------------------------------------------ main loop

    def run(self, conversations) -> dict:
        from ..distill.prompts import student_messages
        from ..llm import ChatLM
        from ..memory.locomo import count_tokens, merged_search
        from ..memory.retrieval import Retriever

        c = self.config
        judge = None
        if c.judge:
            t0 = time.perf_counter()
            judge = _judge_fn(c.judge, c.device)
            self._time("load", t0)
        rows: list[dict] = []
        per_conv: dict[str, dict] = {}
        for conv in conversations:
            conv_dir = self.work / c.method / conv.sample_id
            conv_dir.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            store, stats = self._build_store(conv, conv_dir / "store")
            self._time("memory", t0)
            try:
                search = Retriever(store, c.retrieval)

                def retrieve(question: str, _conv=conv, _search=search) -> list[str]:
                    return [self._dated(_conv, h) for h in merged_search(_search, _conv, question, c.k)]

                info = {"memory": {**stats.as_dict(), "live_records": store.count()}}
                if c.method == "tsubasa":
                    student, info["distill"] = self._distil(conv, store, conv_dir, retrieve)
                    use_adapter = info["distill"]["pairs"] > 0
                else:
                    student, use_adapter = self._student(), False
                lm = ChatLM(student.model, student.tokenizer, max_new_tokens=c.max_new_tokens)
                items = conv.qa[: c.limit] if c.limit else conv.qa
                t0 = time.perf_counter()
                out_rows = []
                for qa in progress_bar(items, desc=f"answer {conv.sample_id}", unit="q"):
                    memories = retrieve(qa.question)
                    question = qa.question + (ADVERSARIAL_HINT if qa.category == 5 else "")
                    messages = student_messages(memories, question)
                    if use_adapter:
                        pred = lm(messages)
                    else:
                        with student.model.disable_adapter():
                            pred = lm(messages)
                    gold = qa.answer if qa.category != 5 else (qa.answer or "No information available")
                    row = {"conversation": conv.sample_id, "question": qa.question, "category": qa.category,
                           "answer": gold, "prediction": pred, "memories": memories,
                           "retrieved_tokens": sum(count_tokens(m) for m in memories),
                           **score_answer(pred, gold, qa.category)}
                    if qa.category == 5:
                        row["adversarial_correct"] = adversarial_correct(pred)
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
        return self._result(rows, per_conv, judge is not None)

    def _result(self, rows: list[dict], per_conv: dict, judged: bool) -> dict:
        c = self.config
        agg = aggregate_scores(rows)
        notes = [
            "scores in percent; overall = categories 1-4; category 5 (adversarial) is reported only under "
            "by_category['5'], scored 100 when the answer contains 'no information available' or "
            "'not mentioned' (its question gets the hint:" + ADVERSARIAL_HINT + ")",
            f"retrieval: {c.retrieval}, top-{c.k} over both speakers' stores merged by score"
            + ("; memories without a date get their session's date in the prompt" if c.date_in_prompt else ""),
            "f1: Mem0-style set token F1; f1_stemmed: LoCoMo's stemmed F1; bleu1: sentence BLEU-1",
        ]
        if c.method == "tsubasa":
            notes.append("tsubasa: ONE adapter per conversation, distilled on the union of both speakers' "
                         f"synthesised QA pairs (synth generator {c.synth_generator})")
        if judged:
            notes.append("judge: categories 1-4 only; replies naming neither CORRECT nor WRONG are not counted")
        if c.limit:
            notes.append(f"limit {c.limit}: only the first {c.limit} questions of each conversation")
        notes.extend(self.notes)
        cfg = asdict(c)
        cfg["work_dir"] = str(self.work)
        return {
            "method": c.method,
            "questions": agg["questions"],
            "overall": agg["overall"],
            "by_category": agg["by_category"],
            "mean_retrieved_tokens": (sum(r["retrieved_tokens"] for r in rows) / len(rows)) if rows else 0.0,
            "seconds": dict(self.seconds),
            "category_names": {str(k): v for k, v in CATEGORY_NAMES.items()},
            "notes": notes,
            "judge_prompt": JUDGE_PROMPT if judged else None,
            "conversations": per_conv,
            "config": cfg,
        }


def evaluate_qa(conversations, config: QAEvalConfig, echo: Callable[[str], None] = print) -> dict:
    """Runs ``config.method`` over ``conversations`` and returns the result (see the module docstring)."""
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
    lines.append(f"mean retrieved tokens per question: {result['mean_retrieved_tokens']:.1f}")
    lines.append("seconds: " + ", ".join(f"{k} {v}" for k, v in result["seconds"].items()))
    return "\n".join(lines)
