"""The token-classification (NER) task adapter: tagged tokens or text with character spans
in, entities out. Each step lives, with the decisions that shape it, in its own module."""

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForTokenClassification,
    DataCollatorForTokenClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from app.errors import DatasetInvalid
from app.ml.tasks.base import Features, Row, TaskAdapter, load_pretrained
from app.ml.tasks.token_classification.encoding import encode_sentences
from app.ml.tasks.token_classification.metrics import evaluation_metrics
from app.ml.tasks.token_classification.prediction import predict_entities
from app.ml.tasks.token_classification.rows import canonical_row
from app.ml.tasks.token_classification.tags import entity_types, tag_set


class TokenClassification(TaskAdapter):
    name = "token-classification"
    best_metric = "entity_f1"

    def matches(self, row: Row) -> bool:
        return ("tokens" in row and "tags" in row) or ("text" in row and "entities" in row)

    def validate_row(self, row: Row, line: int) -> Row:
        return canonical_row(row, line)

    def validate_dataset(self, rows: Sequence[Row], lines: Sequence[int]) -> None:
        if not any(tag != "O" for row in rows for tag in row["tags"]):
            raise DatasetInvalid("no row has an entity; a tagger needs at least one",
                                 field="tags")

    def label_counts(self, rows: Sequence[Row]) -> dict[str, int]:
        """Entities per type."""
        counts: Counter[str] = Counter()
        for row in rows:
            counts.update(entity_types(row["tags"]))
        return dict(sorted(counts.items()))

    def labels(self, rows: Sequence[Row]) -> list[str]:
        return tag_set(tag for row in rows for tag in row["tags"])

    def encode(self, rows: Sequence[Row], tokenizer: PreTrainedTokenizerBase,
               label2id: dict[str, int], max_length: int) -> list[Features]:
        return encode_sentences(rows, tokenizer, label2id, max_length)

    def collator(self, tokenizer: PreTrainedTokenizerBase) -> Any:
        return DataCollatorForTokenClassification(tokenizer)

    def load_model(self, path: str | Path, labels: list[str] | None = None) -> PreTrainedModel:
        return load_pretrained(AutoModelForTokenClassification, path, labels)

    def compute_metrics(self, logits: Any, label_ids: Any, labels: list[str],
                        rows: Sequence[int] | None = None) -> dict[str, float]:
        return evaluation_metrics(logits, label_ids, labels, rows)

    @torch.inference_mode()
    def predict(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                inputs: list[str], parameters: dict[str, Any], max_length: int) -> list[Any]:
        return predict_entities(model, tokenizer, inputs, parameters, max_length)

    def response(self, outputs: list[Any], batched: bool) -> Any:
        # The HF API answers a single string with one flat list of entities.
        return outputs if batched else outputs[0]
