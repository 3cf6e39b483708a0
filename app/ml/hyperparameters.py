"""Resolving a job's hyperparameters ("auto" included) to the values training will use."""

from dataclasses import asdict, dataclass
from typing import Any

BASE_LEARNING_RATE = 5e-5


@dataclass(frozen=True)
class Hyperparameters:
    n_epochs: int
    batch_size: int
    learning_rate: float
    learning_rate_multiplier: float
    max_length: int
    warmup_ratio: float
    weight_decay: float
    gradient_accumulation_steps: int
    eval_steps: int | None
    early_stopping_patience: int | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _given(raw: dict[str, Any], key: str) -> Any:
    value = raw.get(key)
    return None if value in (None, "auto") else value


def auto_epochs(n_rows: int) -> int:
    # Small datasets need more passes to move a pretrained head; large ones do not.
    if n_rows < 1_000:
        return 5
    return 3 if n_rows < 50_000 else 2


def auto_batch_size(n_rows: int) -> int:
    return 16 if n_rows < 1_000 else 32


def resolve(raw: dict[str, Any], n_rows: int) -> Hyperparameters:
    multiplier = float(_given(raw, "learning_rate_multiplier") or 1.0)
    learning_rate = float(_given(raw, "learning_rate") or BASE_LEARNING_RATE * multiplier)
    return Hyperparameters(
        n_epochs=int(_given(raw, "n_epochs") or auto_epochs(n_rows)),
        batch_size=int(_given(raw, "batch_size") or auto_batch_size(n_rows)),
        learning_rate=learning_rate,
        learning_rate_multiplier=multiplier,
        max_length=int(_given(raw, "max_length") or 128),
        warmup_ratio=float(_given(raw, "warmup_ratio") if raw.get("warmup_ratio") is not None
                           else 0.06),
        weight_decay=float(_given(raw, "weight_decay") if raw.get("weight_decay") is not None
                           else 0.01),
        gradient_accumulation_steps=int(_given(raw, "gradient_accumulation_steps") or 1),
        eval_steps=_given(raw, "eval_steps"),
        early_stopping_patience=_given(raw, "early_stopping_patience"),
    )
