"""Resolving a job's hyperparameters ("auto" included) to the values training will use.

What the caller sends wins. What it leaves out (or sends as "auto") is chosen from the data
and the base model, and each choice comes with the reason a job records as an event:

- batch_size: 16 below 5,000 rows, where more, smaller updates help; 32 above.
- n_epochs: enough passes for about TARGET_STEPS optimizer steps, 2 to 10: a small dataset
  needs many passes to move a pretrained model, a large one few.
- learning_rate: by the base model's size (small encoders train best with larger steps:
  1e-4 under 50M parameters, 5e-5 under 200M, 2e-5 above), doubled when the whole run makes
  fewer than FEW_STEPS updates; learning_rate_multiplier scales the result.
- max_length (tasks that cut long rows: text, pair and multi-label classification): 128
  tokens where that holds all but the longest 1% of the training rows; otherwise the 99th
  percentile of row lengths rounded up to a multiple of 64, at most the base model's
  positions. A cut row loses words the label may rest on; a longer limit costs time only on
  the long rows, because batches are padded to their own longest row.
- max_grad_norm: 0, no clipping (see MAX_GRAD_NORM).
- eval_steps: about EVALUATIONS_PER_RUN evaluations over the run (at least every
  MIN_EVAL_STEPS steps, and at least once an epoch), each one a checkpoint the best can be
  picked from.
- early_stopping_patience: stop after PATIENCE evaluations without improvement; 0 sent
  turns early stopping off (the run makes all its steps; the best checkpoint still wins).
- lora (only when sent): the learning rate is chosen from LORA_LEARNING_RATE_BY_SIZE, ten
  times a full fine-tune's: the adapters start at zero and are few, so small steps barely
  move the model in the steps a run has.
"""

import math
from dataclasses import asdict, dataclass, field
from typing import Any

BASE_LEARNING_RATE = 5e-5
SMALL_BATCH_BELOW_ROWS = 5_000
TARGET_STEPS = 600
MIN_EPOCHS, MAX_EPOCHS = 2, 10
FEW_STEPS = 200
EVALUATIONS_PER_RUN = 8
MIN_EVAL_STEPS = 10
PATIENCE = 3
MAX_LENGTH = 128
# No gradient clipping unless asked, as in the plain transformers example loop
# (run_glue_no_trainer), so that the settings a user copies from such a script make the same
# updates here. Trainer's 1.0 is not harmless: on a short MiniLM run on SST-2 the gradient
# norm grows from 0.3 to 3 as the head learns, and 1.0 scaled down half the updates. Over
# five seeds it changed dev accuracy by nothing measurable (bench/parity.py), and AdamW's
# per-weight scaling already bounds each update by the learning rate.
MAX_GRAD_NORM = 0.0
# Rows longer than MAX_LENGTH tokens the default may cut (1%), and the step a longer limit
# rounds up to.
LONG_ROWS_ALLOWED = 0.01
MAX_LENGTH_STEP = 64
LONGEST_MAX_LENGTH = 512
# Learning rate by base-model size: (parameters below, learning rate).
LEARNING_RATE_BY_SIZE = ((50_000_000, 1e-4), (200_000_000, 5e-5))
LARGE_MODEL_LEARNING_RATE = 2e-5
# The same for LoRA adapters (the LoRA paper's GLUE runs used 4e-4 to 5e-4 on RoBERTa-base).
LORA_LEARNING_RATE_BY_SIZE = ((50_000_000, 1e-3), (200_000_000, 5e-4))
LORA_LARGE_MODEL_LEARNING_RATE = 2e-4
LORA_BASE_LEARNING_RATE = 5e-4


@dataclass(frozen=True)
class LoraSettings:
    """Low-rank adapters instead of a full fine-tune: rank, scale (alpha / r) and dropout."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.1

    @classmethod
    def of(cls, raw: dict[str, Any] | None) -> "LoraSettings | None":
        return None if raw is None else cls(**raw)


@dataclass(frozen=True)
class DataProfile:
    """What the automatic choices look at: the training rows and the base model."""

    n_rows: int
    # The base model's parameter count; None where it cannot be read without loading it.
    parameters: int | None = None
    # Tokens in the training rows' 99th-percentile row, special tokens included; None for
    # tasks that never cut rows (see TaskAdapter.row_inputs).
    long_row_tokens: int | None = None
    # The longest input the base model takes (max_position_embeddings), where known.
    max_positions: int | None = None


@dataclass(frozen=True)
class Hyperparameters:
    n_epochs: int
    batch_size: int
    learning_rate: float
    learning_rate_multiplier: float
    max_length: int
    warmup_ratio: float
    weight_decay: float
    max_grad_norm: float
    gradient_accumulation_steps: int
    eval_steps: int | None
    early_stopping_patience: int | None
    # Train LoRA adapters (app/ml/lora.py) rather than every weight; None: a full fine-tune.
    lora: LoraSettings | None = None
    # Why each automatic value was chosen, in words (recorded as job events; not a setting).
    reasons: tuple[str, ...] = field(default=(), compare=False)

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values.pop("reasons")
        if values["lora"] is None:
            values.pop("lora")  # a full fine-tune shows no lora at all
        return values


def _given(raw: dict[str, Any], key: str) -> Any:
    value = raw.get(key)
    return None if value in (None, "auto") else value


def _given_or(raw: dict[str, Any], key: str, default: Any) -> Any:
    value = _given(raw, key)
    return default if value is None else value


def _size(parameters: int | None) -> str:
    return f"a {parameters / 1e6:.0f}M-parameter model" if parameters else "a model of unknown size"


def auto_batch_size(n_rows: int) -> tuple[int, str]:
    if n_rows < SMALL_BATCH_BELOW_ROWS:
        return 16, f"batch_size 16 because {n_rows:,} rows is few: more, smaller updates"
    return 32, f"batch_size 32 because {n_rows:,} rows is plenty"


def auto_epochs(steps_per_epoch: int) -> tuple[int, str]:
    wanted = math.ceil(TARGET_STEPS / steps_per_epoch)
    epochs = min(MAX_EPOCHS, max(MIN_EPOCHS, wanted))
    if epochs == wanted:
        why = f"for about {TARGET_STEPS} optimizer steps at {steps_per_epoch} an epoch"
    elif epochs == MIN_EPOCHS:
        why = f"(the fewest): {steps_per_epoch} steps an epoch are already plenty"
    else:
        why = (f"(the most) for only {steps_per_epoch} steps an epoch; early stopping ends "
               "the run once validation stops improving")
    return epochs, f"n_epochs {epochs} {why}"


def auto_learning_rate(parameters: int | None, total_steps: int,
                       multiplier: float, lora: bool = False) -> tuple[float, str]:
    by_size, large, unknown = (
        (LORA_LEARNING_RATE_BY_SIZE, LORA_LARGE_MODEL_LEARNING_RATE, LORA_BASE_LEARNING_RATE)
        if lora else (LEARNING_RATE_BY_SIZE, LARGE_MODEL_LEARNING_RATE, BASE_LEARNING_RATE))
    base = unknown if parameters is None else next(
        (rate for below, rate in by_size if parameters < below), large)
    why = [_size(parameters)]
    if lora:
        why.insert(0, "LoRA adapters (10x a full fine-tune's rate: only the small adapter "
                      "matrices and the task head train)")
    if total_steps < FEW_STEPS:
        base *= 2
        why.append(f"only {total_steps} optimizer steps (doubled)")
    if multiplier != 1.0:
        why.append(f"learning_rate_multiplier {multiplier:g}")
    rate = base * multiplier
    return rate, f"learning_rate {rate:.0e} because {' and '.join(why)}"


def auto_max_length(long_row_tokens: int | None,
                    max_positions: int | None) -> tuple[int, str | None]:
    """The token limit rows are cut at, and why (None: nothing measured, nothing to say)."""
    if long_row_tokens is None:
        return MAX_LENGTH, None
    share = f"{1 - LONG_ROWS_ALLOWED:.0%} of the training rows"
    if long_row_tokens <= MAX_LENGTH:
        return MAX_LENGTH, (f"max_length {MAX_LENGTH} because {share} are at most "
                            f"{long_row_tokens} tokens")
    ceiling = min(LONGEST_MAX_LENGTH, max_positions or LONGEST_MAX_LENGTH)
    length = min(ceiling, math.ceil(long_row_tokens / MAX_LENGTH_STEP) * MAX_LENGTH_STEP)
    why = f"max_length {length} because {share} are up to {long_row_tokens} tokens"
    if length < long_row_tokens:
        why += f" (the most the base model takes is {ceiling})"
    return length, why


def auto_eval_steps(total_steps: int, steps_per_epoch: int) -> tuple[int, str]:
    every = min(steps_per_epoch, max(MIN_EVAL_STEPS,
                                     math.ceil(total_steps / EVALUATIONS_PER_RUN)))
    return every, (f"eval_steps {every}: about {math.ceil(total_steps / every)} evaluations "
                   f"over {total_steps} steps, the best of which becomes the version")


def resolve(raw: dict[str, Any], profile: DataProfile | int) -> Hyperparameters:
    if isinstance(profile, int):
        profile = DataProfile(n_rows=profile)
    reasons: list[str] = []

    def chosen(value: Any, auto: tuple[Any, str | None]) -> Any:
        if value is not None:
            return value
        if auto[1]:
            reasons.append(auto[1])
        return auto[0]

    batch_size = int(chosen(_given(raw, "batch_size"), auto_batch_size(profile.n_rows)))
    accumulation = int(_given(raw, "gradient_accumulation_steps") or 1)
    steps_per_epoch = max(1, math.ceil(profile.n_rows / (batch_size * accumulation)))
    epochs = int(chosen(_given(raw, "n_epochs"), auto_epochs(steps_per_epoch)))
    total_steps = steps_per_epoch * epochs
    multiplier = float(_given(raw, "learning_rate_multiplier") or 1.0)
    lora = LoraSettings.of(raw.get("lora"))
    learning_rate = float(chosen(_given(raw, "learning_rate"),
                                 auto_learning_rate(profile.parameters, total_steps, multiplier,
                                                    lora=lora is not None)))
    eval_steps = chosen(_given(raw, "eval_steps"), auto_eval_steps(total_steps, steps_per_epoch))
    patience = _given(raw, "early_stopping_patience")
    if patience is None:
        patience = PATIENCE
        reasons.append(f"early_stopping_patience {PATIENCE}: training stops after "
                       f"{PATIENCE} evaluations without improvement")
    return Hyperparameters(
        n_epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        learning_rate_multiplier=multiplier,
        max_length=int(chosen(_given(raw, "max_length"),
                              auto_max_length(profile.long_row_tokens, profile.max_positions))),
        warmup_ratio=float(_given_or(raw, "warmup_ratio", 0.06)),
        weight_decay=float(_given_or(raw, "weight_decay", 0.01)),
        max_grad_norm=float(_given_or(raw, "max_grad_norm", MAX_GRAD_NORM)),
        gradient_accumulation_steps=accumulation,
        eval_steps=int(eval_steps),
        early_stopping_patience=int(patience),
        lora=lora,
        reasons=tuple(reasons),
    )
