"""One run's configuration: a validated stage config per stage, shared by personalize, eval qa,
the demo and the CLI (whose options are generated from these dataclasses: cli/options.py).

``RunConfig(student, memory, synth, teacher, train, answer, eval, seed)``; a stage left out
gets its default (synth / teacher / train: :func:`.distill.configs.recipe`). Values more
than one stage reads are written once and agree: the run's ``seed`` is every stage's seed,
and training uses the answer stage's ``k``, ranking and grounding, so the student learns the
prompt it answers with. Light: no torch import.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from .distill.configs import (AnswerConfig, StudentConfig, SynthConfig, TeacherConfig, TrainConfig,
                              recipe)
from .errors import InputError
from .memory.config import MemoryConfig

METHODS = ("rag-utterances", "rag-observations", "rag-evolved", "tsubasa")
STAGES = ("student", "memory", "synth", "teacher", "train", "answer", "eval")


@dataclass
class EvalConfig:
    """``eval qa``: which arm answers the LoCoMo questions, and how they are scored. The method
    decides the memory (rag-utterances: raw turns; rag-observations: the dataset's observations;
    rag-evolved and tsubasa: those observations through the rule manager, with uncited turns);
    the memory stage gives only the embedder."""

    method: str = "rag-observations"
    judge: str | None = None  # local model folder for the LLM judge; None = no judge
    limit: int | None = None  # answer only the first N questions per conversation
    date_in_prompt: bool = True  # prefix undated memories with their session date in the prompt
    seeds: int = 1  # runs with seeds seed, seed + 1, ...; scores are their mean
    closed_book: bool = False  # answer from the question alone, no memories
    work_dir: str | None = None  # None = a fresh temp dir

    def __post_init__(self):
        if self.method not in METHODS:
            raise InputError(f"expected one of {METHODS}, got {self.method!r}", field="method")
        if self.limit is not None and self.limit < 1:
            raise InputError(f"must be >= 1, got {self.limit}", field="limit")
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            raise InputError(f"must be an integer >= 1, got {self.seeds!r}", field="seeds")


_TYPES = {"student": StudentConfig, "memory": MemoryConfig, "synth": SynthConfig, "teacher": TeacherConfig,
          "train": TrainConfig, "answer": AnswerConfig, "eval": EvalConfig}
# values several stages read: (owner stage, or "run" for the run itself, field) -> the stages that copy it
_SHARED = {("run", "seed"): (("synth", "seed"), ("train", "seed"), ("student", "seed")),
           ("answer", "k"): (("train", "k"),),
           ("answer", "retrieval"): (("train", "retrieval"),),
           ("answer", "grounding"): (("train", "grounding"),)}


def _default(cls, name: str):
    f = next(f for f in fields(cls) if f.name == name)
    return f.default


@dataclass
class RunConfig:
    """Everything a run can be told, one validated config per stage (see the module docstring)."""

    student: StudentConfig | None = None
    memory: MemoryConfig | None = None
    synth: SynthConfig | None = None
    teacher: TeacherConfig | None = None
    train: TrainConfig | None = None
    answer: AnswerConfig | None = None
    eval: EvalConfig | None = None
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.memory is None:
            self.memory = MemoryConfig()
        synth, teacher, train = recipe(self.memory.source if isinstance(self.memory, MemoryConfig) else "llm")
        defaults = {"synth": synth, "teacher": teacher, "train": train}
        for name in STAGES:
            value = getattr(self, name)
            if value is None:
                setattr(self, name, defaults.get(name) or _TYPES[name]())
            elif not isinstance(value, _TYPES[name]):
                raise InputError(f"expected a {_TYPES[name].__name__}, got {type(value).__name__}", field=name)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise InputError(f"must be an integer, got {self.seed!r}", field="seed")
        self.train.validate()
        self._agree()

    def _agree(self) -> None:
        """Each shared value set once: a copy left at its default takes the owner's value; a copy
        set to another value than the owner's (also set) is an error naming both."""
        for (owner, name), copies in _SHARED.items():
            places = [(owner, name), *copies]
            set_values = {}
            for stage, f in places:
                obj = self if stage == "run" else getattr(self, stage)
                cls = RunConfig if stage == "run" else _TYPES[stage]
                value = getattr(obj, f)
                if value != _default(cls, f):
                    set_values[f"{stage}.{f}" if stage != "run" else f] = value
            if len(set(map(repr, set_values.values()))) > 1:
                raise InputError("these must agree (one value, read by several stages): "
                                 + ", ".join(f"{k}={v!r}" for k, v in set_values.items()), field=name)
            value = next(iter(set_values.values())) if set_values else getattr(
                self if owner == "run" else getattr(self, owner), name)
            for stage, f in places:
                if stage == "run":
                    self.seed = value
                elif getattr(getattr(self, stage), f) != value:  # a caller's config object is never modified
                    setattr(self, stage, replace(getattr(self, stage), **{f: value}))

    def updated(self, changes: dict) -> "RunConfig":
        """A validated copy with ``changes`` (stage -> field -> value; ``"run"`` for the run's own
        fields) applied; a changed shared value is changed in every stage that copies it."""
        changes = {stage: dict(values) for stage, values in changes.items()}
        for stage in changes:
            if stage != "run" and stage not in STAGES:
                raise InputError(f"unknown stage {stage!r}; expected one of {STAGES + ('run',)}", field="changes")
        for (owner, name), copies in _SHARED.items():
            if name in changes.get(owner, {}):
                for stage, f in copies:
                    changes.setdefault(stage, {})[f] = changes[owner][name]
        stages = {stage: replace(getattr(self, stage), **values) for stage, values in changes.items() if stage != "run"}
        return replace(self, **changes.get("run", {}), **stages)

    def with_seed(self, seed: int) -> "RunConfig":
        """A copy whose run seed (so every stage's seed) is ``seed``."""
        return self.updated({"run": {"seed": seed}})


def eval_qa_config() -> RunConfig:
    """The base RunConfig of ``eval qa``: its tsubasa arm distils from the dataset's observations
    (through the rule manager), so the memory source is "observations" and the recipe's writer
    for parsed observations applies (:func:`.distill.configs.recipe`)."""
    return RunConfig(memory=MemoryConfig(source="observations"))
