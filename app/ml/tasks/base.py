"""The task adapter: everything that differs between tasks lives behind this one interface."""

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from transformers import BatchEncoding, PreTrainedModel, PreTrainedTokenizerBase
from transformers.models.auto.auto_factory import _BaseAutoModelClass

from app.ml.datasets import Row

Features = dict[str, Any]
# Feature key naming the dataset row a feature came from, where one row makes several
# features (windows of a long sentence). Not a model input: Trainer drops it before collating.
SOURCE_ROW = "row"


def load_pretrained(auto_class: type[_BaseAutoModelClass], path: str | Path,
                    labels: list[str] | None = None,
                    problem_type: str | None = None) -> PreTrainedModel:
    """Load weights from a directory (safetensors only); labels given = a new head for them,
    trained for `problem_type` (None: transformers infers it from the labels' type)."""
    kwargs: dict[str, Any] = {"use_safetensors": True}
    if labels is not None:
        kwargs |= {
            # A fine-tuned model used as a base may have another label set: new head.
            "ignore_mismatched_sizes": True,
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)},
            # Set even when None: a base fine-tuned for another task keeps its problem type
            # in its config, which would pick the wrong loss for the new head.
            "problem_type": problem_type,
        }
    model: PreTrainedModel = auto_class.from_pretrained(str(path), **kwargs)
    return model


def length_sorted_batches(tokenizer: PreTrainedTokenizerBase, inputs: list[str],
                          max_length: int, batch_size: int
                          ) -> Iterator[tuple[list[int], BatchEncoding]]:
    """The inputs tokenized in padded batches of similar length, each with the positions of
    its inputs: sorting by length keeps padding, and so wasted compute, small."""
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        yield chunk, tokenizer([inputs[i] for i in chunk], truncation=True,
                               max_length=max_length, padding=True, return_tensors="pt")


class TaskAdapter(ABC):
    name: str
    # Key in the evaluation metrics that picks the best checkpoint.
    best_metric: str
    greater_is_better: bool = True
    # Evaluate by the loss alone, with no compute_metrics (language modelling: a logit per
    # vocabulary entry per token is too big to gather).
    evaluates_loss_only: bool = False
    # Row field an automatic held-out split keeps in proportion (None: a plain random split).
    stratify_by: str | None = None

    @abstractmethod
    def matches(self, row: Row) -> bool:
        """Whether a row has this task's shape (used to detect the task of an upload)."""

    def accepts_rows_of(self, detected_task: str) -> bool:
        """Whether a file detected as `detected_task` can train this task."""
        return detected_task == self.name

    @abstractmethod
    def validate_row(self, row: Row, line: int) -> Row:
        """Return the row in canonical form, or raise DatasetInvalid naming line and field."""

    @abstractmethod
    def validate_dataset(self, rows: Sequence[Row], lines: Sequence[int]) -> None:
        """Checks that need every row, such as the number of distinct labels.

        `lines[i]` is the file line of `rows[i]`, so errors can name it."""

    @abstractmethod
    def label_counts(self, rows: Sequence[Row]) -> dict[str, int]: ...

    @abstractmethod
    def labels(self, rows: Sequence[Row]) -> list[str]:
        """The model's label set, in a stable order."""

    @abstractmethod
    def encode(self, rows: Sequence[Row], tokenizer: PreTrainedTokenizerBase,
               label2id: dict[str, int], max_length: int) -> list[Features]: ...

    @abstractmethod
    def collator(self, tokenizer: PreTrainedTokenizerBase) -> Any: ...

    def row_inputs(self, row: Row) -> tuple[str, str | None] | None:
        """The text (and pair) a row is tokenized from, for measuring how long rows are, in a
        task whose `max_length` cuts rows short; None where it never does (token
        classification windows long sentences, language modelling packs blocks)."""
        return None

    @abstractmethod
    def load_model(self, path: str | Path, labels: list[str] | None = None) -> PreTrainedModel:
        """Load weights from a directory (safetensors only); labels given = new head."""

    @abstractmethod
    def compute_metrics(self, logits: Any, label_ids: Any, labels: list[str],
                        rows: Sequence[int] | None = None) -> dict[str, Any]:
        """Scores over the evaluation features; `rows[i]` is the dataset row of feature i
        (its SOURCE_ROW), so a task can score whole rows rather than features. A figure
        that is not one number (a confusion matrix) is kept with the version only."""

    def prepare_head(self, model: Any, train: list[Features]) -> None:
        """Before training: set up a new head from the training features (multi-label: each
        label's bias at its prior log-odds)."""
        return None  # most tasks train the head as transformers initialises it

    def keep_for_serving(self, model: PreTrainedModel, tables: dict[str, Any]) -> None:
        """After an evaluation, before its checkpoint is saved: put in the model's config
        what serving needs from that evaluation (multi-label thresholds), so the checkpoint,
        and a version made from it, carries it in config.json. `tables` holds the
        evaluation's figures that are not one number."""
        return None  # most tasks serve from the weights and labels alone

    def report(self, metrics: dict[str, float]) -> dict[str, float]:
        """Evaluation metrics as jobs and versions show them (add figures derived from them)."""
        return metrics

    @abstractmethod
    def predict(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                inputs: list[str], parameters: dict[str, Any], max_length: int) -> list[Any]:
        """Run the model and shape the answer in the Hugging Face Inference API format."""

    def response(self, outputs: list[Any], batched: bool) -> Any:
        """The answer's body: one result per input; a task whose Hugging Face format answers a
        single string differently (token classification: one flat list) overrides this."""
        return outputs
