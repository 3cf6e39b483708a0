"""The task catalog: which task adapters exist, and which one a dataset's rows call for."""

from app.errors import DatasetInvalid, InvalidRequest
from app.ml.tasks.base import Row, TaskAdapter
from app.ml.tasks.classification import TextClassification
from app.ml.tasks.language_modeling import CausalLanguageModeling, MaskedLanguageModeling
from app.ml.tasks.multi_label import MultiLabelClassification
from app.ml.tasks.token_classification import TokenClassification

# In detection order: a plain-text row is masked-lm; a job may ask for causal-lm instead.
TASKS: dict[str, TaskAdapter] = {
    adapter.name: adapter
    for adapter in (TextClassification(), MultiLabelClassification(), TokenClassification(),
                    MaskedLanguageModeling(), CausalLanguageModeling())
}


# What a file of plain-text rows trains (a job may ask for causal-lm instead).
PLAIN_TEXT_TASK = MaskedLanguageModeling.name


def is_plain_text(row: Row) -> bool:
    """A row with a text and nothing else: continued pretraining, or a row missing its label."""
    return TASKS[PLAIN_TEXT_TASK].matches(row)


def get_task(name: str) -> TaskAdapter:
    if name not in TASKS:
        supported = ", ".join(sorted(TASKS))
        raise InvalidRequest(f"Task '{name}' is not supported; supported tasks: {supported}.",
                             param="task", code="unsupported_task")
    return TASKS[name]


def detect_task(row: Row, line: int) -> TaskAdapter:
    for adapter in TASKS.values():
        if adapter.matches(row):
            return adapter
    raise DatasetInvalid("has no recognised row shape; text classification needs 'text' and "
                         "'label', multi-label classification 'text' and 'labels', token "
                         "classification 'tokens' and 'tags' or 'text' and 'entities', "
                         "continued pretraining 'text' alone", line=line)
