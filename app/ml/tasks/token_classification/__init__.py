"""Token classification (NER): tagged tokens or text with character spans in, entities out.

The decisions where the contract is silent live with the code they shape:

- `tags`: IOB2, and why a broken `I-X` is rejected at upload rather than repaired.
- `rows`: both row shapes; text with character spans becomes words and tags.
- `encoding`: words as prediction cuts them, sub-token labels, and windows over sentences
  longer than `max_length`.
- `metrics`: seqeval entity scores; the best `entity_f1` picks the version.
- `entities`: token scores to entities in the Hugging Face format (aggregation, offsets).
- `prediction`: the model over windowed inputs.
- `adapter`: the `TokenClassification` task adapter that ties them together.
"""

from app.ml.tasks.token_classification.adapter import TokenClassification
from app.ml.tasks.token_classification.encoding import (
    IGNORED,
    WINDOW_STRIDE,
    Window,
    predict_time_words,
    windows,
    word_labels,
)
from app.ml.tasks.token_classification.entities import (
    AGGREGATIONS,
    DEFAULT_AGGREGATION,
    TokenScores,
    aggregate,
)
from app.ml.tasks.token_classification.metrics import entity_metrics
from app.ml.tasks.token_classification.prediction import PREDICT_BATCH
from app.ml.tasks.token_classification.rows import joins_previous, tagged_words, word_spans
from app.ml.tasks.token_classification.tags import bio_error, entity_types, split_tag

__all__ = [
    "AGGREGATIONS",
    "DEFAULT_AGGREGATION",
    "IGNORED",
    "PREDICT_BATCH",
    "WINDOW_STRIDE",
    "TokenClassification",
    "TokenScores",
    "Window",
    "aggregate",
    "bio_error",
    "entity_metrics",
    "entity_types",
    "joins_previous",
    "predict_time_words",
    "split_tag",
    "tagged_words",
    "windows",
    "word_labels",
    "word_spans",
]
