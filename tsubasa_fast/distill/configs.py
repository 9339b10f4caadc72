"""The distillation stage configs (student, synthesis, teacher cache, training, answering) and
the recipe of their best-measured values, in a module light enough for the CLI to read
defaults from (no torch or transformers import)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import InputError
from ..memory.config import DEFAULT_K
from ..memory.retrieval import DEFAULT_MODE, MODES

GENERATORS = ("llm", "rule", "llm-text")
EVIDENCE_POLICIES = ("include", "exclude")
LOGPROB_DTYPES = ("float16", "bfloat16")  # how the teacher cache stores log-probs
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class StudentConfig:
    """Everything that decides how the student model is built (also the base every LLM stage uses)."""

    model: str | None = None  # local model folder; None = SmolLM2-135M-Instruct
    load_in_4bit: bool | None = None  # None: 4-bit on CUDA, full precision on CPU
    lora_r: int = 16
    lora_alpha: int | None = None  # None: 2 * lora_r (the scale every entry point uses)
    lora_dropout: float = 0.0
    target_modules: tuple = LORA_TARGETS
    device: str | None = None  # None: cuda when available, else cpu
    gradient_checkpointing: bool = False
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.lora_r, bool) or not isinstance(self.lora_r, int) or self.lora_r < 1:
            raise InputError(f"must be a positive integer, got {self.lora_r!r}", field="lora_r")
        if self.lora_alpha is not None and (isinstance(self.lora_alpha, bool) or not isinstance(
                self.lora_alpha, (int, float)) or self.lora_alpha <= 0):
            raise InputError(f"must be positive, got {self.lora_alpha!r}", field="lora_alpha")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise InputError(f"must be in [0, 1), got {self.lora_dropout!r}", field="lora_dropout")
        if self.load_in_4bit not in (None, True, False):
            raise InputError(f"must be True, False or None (4-bit on CUDA only), got {self.load_in_4bit!r}",
                             field="load_in_4bit")

    @property
    def alpha(self) -> float:
        """The LoRA alpha used: ``lora_alpha``, or 2 x ``lora_r`` when None (kept None, so a copy
        with another rank keeps the rule)."""
        return 2 * self.lora_r if self.lora_alpha is None else self.lora_alpha

    def resolved_device(self):
        """The torch.device the model loads on (:func:`tsubasa_fast.models.load_policy`)."""
        from .. import models

        return models.load_policy(self.device, self.load_in_4bit)[0]


@dataclass
class AnswerConfig:
    """How the student (or the base) is asked: the top-k memories, then a greedy answer. Training
    uses the same k, ranking and grounding, so the student learns the prompt it answers with."""

    k: int = DEFAULT_K
    retrieval: str = DEFAULT_MODE  # the best measured (benchmarks/README.md)
    grounding: bool = True  # False: the question alone
    max_new_tokens: int = 32

    def __post_init__(self):
        for name in ("k", "max_new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"must be an integer >= 1, got {value!r}", field=name)
        if self.retrieval not in MODES:
            raise InputError(f"must be one of {MODES}, got {self.retrieval!r}", field="retrieval")


@dataclass
class SynthConfig:
    """Knobs of :func:`synthesize`; the defaults are the recipe's (:func:`recipe`, measured with
    SmolLM2-135M on a CPU), so a standalone ``synth`` writes as personalize does."""

    generator: str = "llm"              # "llm": the base model under the writer's grammar (.writer);
                                        # "rule": templates over parsed observations; "llm-text": the
                                        # unconstrained Q:/A: writer (ablation)
    group_size: int = 1                 # observations shown per generation prompt
    pairs_per_prompt: int = 3           # pairs asked for per prompt (rule: per observation clause)
    max_answer_words: int = 15          # filter (c)
    f1_threshold: float = 0.5           # filter (b): re-answer vs pair answer token F1 must reach this
    min_context_overlap: float = 0.5    # filter (b'), ours: share of the answer's content words found
                                        # in the context (0 turns it off); catches invented answers
                                        # the same small model then "confirms" when re-asked
    check_answerable: bool = False      # filter (b) on/off (needs an LLM; the llm writer has its round trip)
    check_well_formed: bool = True      # the malformed-pair check (pair_check); off only for ablations
                                        # and pipeline tests on random models (reported as skipped)
    round_trip: bool = True             # the llm writer's round trip (.writer); off likewise
    strip_question_words: bool = True   # filter (b): also score the re-answer without question words
    max_new_tokens: int = 80            # generation limit for writing pairs
    answer_max_new_tokens: int = 24     # generation limit for the answerability re-ask
    limit: int | None = None            # at most this many prompts (groups), in store order
    seed: int = 0                       # torch seed (matters only for a sampling chat function)
    report_examples: int = 5            # dropped pairs shown per filter in the report
    # pairs whose evidence (the memory they were written from) is already in the student's top-k
    # for their question: "include" (train on them too) or "exclude" (only pairs the teacher knows
    # more about); the share is reported either way (distill.stages.evidence_stage)
    evidence_in_topk: str = "include"
    # abstention pairs (.abstain) per kept pair: a question about one user built from another's
    # fact, answered "No information available", and as many hinted copies of answerable pairs;
    # needs two or more users (eval qa's conversations); 0 = none
    abstain_share: float = 0.0

    def __post_init__(self):
        if self.evidence_in_topk not in EVIDENCE_POLICIES:
            raise InputError(f"must be one of {EVIDENCE_POLICIES}, got {self.evidence_in_topk!r}",
                             field="evidence_in_topk")
        if self.generator not in GENERATORS:
            raise InputError(f"must be one of {GENERATORS}, got {self.generator!r}", field="generator")
        least = {"group_size": 1, "pairs_per_prompt": 1, "max_answer_words": 1, "max_new_tokens": 1,
                 "answer_max_new_tokens": 1, "report_examples": 0, "limit": 1}  # limit None: no limit
        for name, low in least.items():
            value = getattr(self, name)
            if (value is not None or name != "limit") and (
                    isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise InputError(f"must be an integer >= {low}, got {value!r}", field=name)
        for name in ("f1_threshold", "min_context_overlap"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise InputError(f"must be in [0, 1], got {getattr(self, name)}", field=name)
        if not 0.0 <= float(self.abstain_share) <= 1.0:
            raise InputError(f"must be in [0, 1], got {self.abstain_share}", field="abstain_share")


@dataclass
class TeacherConfig:
    """The teacher cache: top-d entries per answer token at a temperature, in shards."""

    d: int = 5
    temperature: float = 1.0
    logprob_dtype: str = "float16"
    batch_size: int = 8
    max_length: int = 1024
    shard_tokens: int = 65536

    def __post_init__(self):
        for name in ("d", "batch_size", "max_length", "shard_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"must be an integer >= 1, got {value!r}", field=name)
        if not float(self.temperature) > 0:
            raise InputError(f"must be > 0, got {self.temperature!r}", field="temperature")
        if self.logprob_dtype not in LOGPROB_DTYPES:
            raise InputError(f"must be one of {LOGPROB_DTYPES}, got {self.logprob_dtype!r}", field="logprob_dtype")


@dataclass
class TrainConfig:
    """The student's training; the defaults are the recipe's (:func:`recipe`): 3 epochs at lr 3e-4
    with a CE term on the answer beside the top-d KL."""

    steps: int | None = None  # optimizer steps; None = derived from epochs
    epochs: float = 3.0
    batch_size: int = 8  # examples per optimizer step, across all processes
    micro_batch_size: int = 4  # at most this many examples per forward pass in one process
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    tail: str = "renorm"
    ce_weight: float = 1.0  # the teacher's top-d alone teaches its style ("The answer is: ..."), CE the span
    k: int = DEFAULT_K  # memories in the student prompt
    grounding: bool = True  # False: the question alone (the "no grounding" ablation)
    retrieval: str = DEFAULT_MODE  # the best measured (benchmarks/README.md)
    checkpoint_every: int = 50
    max_length: int = 1024
    seed: int = 0
    report_to: str = "none"  # Trainer's logging integrations: "tensorboard", "wandb", "all", ...

    def validate(self) -> None:
        if self.steps is not None and self.steps < 1:
            raise InputError(f"must be >= 1, got {self.steps}", field="steps")
        if not self.epochs > 0:
            raise InputError(f"must be > 0, got {self.epochs}", field="epochs")
        for name in ("batch_size", "micro_batch_size", "checkpoint_every", "k", "max_length"):
            if getattr(self, name) < 1:
                raise InputError(f"must be >= 1, got {getattr(self, name)}", field=name)
        from ..ops.reference import TAIL_MODES

        if self.tail not in TAIL_MODES:
            raise InputError(f"must be one of {TAIL_MODES}, got {self.tail!r}", field="tail")
        if not self.lr > 0:
            raise InputError(f"must be > 0, got {self.lr}", field="lr")
        if not 0 <= self.warmup_ratio < 1:
            raise InputError(f"must be in [0, 1), got {self.warmup_ratio}", field="warmup_ratio")
        if not self.ce_weight >= 0:
            raise InputError(f"must be >= 0, got {self.ce_weight}", field="ce_weight")


def recipe(source: str = "llm") -> tuple:
    """``(SynthConfig, TeacherConfig, TrainConfig)``: the stage settings measured best with the
    default model on CPU, the defaults of personalize, eval qa and the demo, written once.

    The question writer depends on what the memories are (``source``, MemoryConfig's):
    - the dataset's parsed observations ("observations", eval qa's tsubasa arm): the rule writer,
      deterministic templates (benchmarks/README.md, "tsubasa with the rule writer": a larger
      gain over rag-evolved on both dev conversations than the LLM writer's, and 3 s of
      synthesis instead of about 50 min);
    - a user's own history ("llm" extraction or "utterances", personalize and the demo): the LLM
      writer (writer 2: answers picked from the memory, a question per answer under its grammar,
      a round trip that replaces the answerability re-ask; "make demo": +0.104 token F1).
    Both with a CE term on the answer beside the top-d KL: the teacher's top-d alone teaches its
    own style ("The answer is: ..."), the CE term the span.
    """
    generator = "rule" if source == "observations" else "llm"
    return SynthConfig(generator=generator), TeacherConfig(), TrainConfig()  # the values: the dataclasses' defaults
