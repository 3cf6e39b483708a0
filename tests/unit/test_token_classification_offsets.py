"""Property: for any text, every predicted entity is a span of the caller's own string.

The tokenizer is MiniLM's real one (uncased, accent-stripping, WordPiece), so offsets go
through the normalisation that makes them hard; the model on top is a tiny random BERT
whose predictions are all over the place, which is what exercises every grouping path.
"""

from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer, BertConfig, BertForTokenClassification

from app.ml.base_models import bundled_minilm_dir
from app.ml.tasks.token_classification import AGGREGATIONS, TokenClassification, word_spans

LABELS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
MAX_LENGTH = 24  # small, so longer examples are windowed too

PIECES = ["Angela", "Merkel", "Zoë", "Zoe\u0301", "São", "Paulo", "naïve", "CAFÉ", "Ångström",
          "東京", "مرحبا", "😀", "👍🏽", "👨\u200d👩\u200d👧", "🇫🇷", "#1", "U.S.", "e-mail", "'s",
          "(", ")", ",", ".", "!", "...", "«", "»", "—", "\u200b", "\u00ad", "ﬁ", "İstanbul",
          "ß", "x²", "\u0301", "\ufeff"]
SEPARATORS = [" ", "  ", "\t", "\n", "\u00a0", "", "\u3000"]


@st.composite
def texts(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        return draw(st.text(min_size=1, max_size=60).filter(str.strip))
    parts = draw(st.lists(st.tuples(st.sampled_from(PIECES), st.sampled_from(SEPARATORS)),
                          min_size=1, max_size=30))
    text = "".join(piece + sep for piece, sep in parts)
    return text if text.strip() else "x"


@pytest.fixture(scope="module")
def tagger(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    tokenizer = AutoTokenizer.from_pretrained(bundled_minilm_dir())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=16,
                        max_position_embeddings=MAX_LENGTH, initializer_range=1.0,
                        num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
                        label2id={label: i for i, label in enumerate(LABELS)})
    torch.manual_seed(0)
    directory: Path = tmp_path_factory.mktemp("offsets") / "model"
    BertForTokenClassification(config).save_pretrained(directory, safe_serialization=True)
    model = TokenClassification().load_model(directory)
    model.eval()
    return model, tokenizer


def _tokenized_words(tokenizer: Any, text: str) -> list[tuple[int, int]]:
    """The words the tokenizer makes any token of, as character spans."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans: dict[int, tuple[int, int]] = {}
    for word, (start, end) in zip(encoded.word_ids(), encoded["offset_mapping"], strict=True):
        assert word is not None
        first = spans.get(word, (start, end))
        spans[word] = (first[0], end)
    return list(spans.values())


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=texts())
def test_entities_are_spans_of_the_input_and_never_overlap(tagger: tuple[Any, Any],
                                                           text: str) -> None:
    model, tokenizer = tagger
    task = TokenClassification()
    # The words training labels (what no strategy but "none" may split).
    words = word_spans(text, set())
    for strategy in AGGREGATIONS:
        for ignore in (None, ["O"], []):
            parameters: dict[str, Any] = {"aggregation_strategy": strategy}
            if ignore is not None:
                parameters["ignore_labels"] = ignore
            [entities] = task.predict(model, tokenizer, [text], parameters, MAX_LENGTH)
            previous_end = 0
            for entity in entities:
                start, end = entity["start"], entity["end"]
                assert previous_end <= start < end <= len(text), (strategy, entities)
                assert text[start:end] == entity["word"], (strategy, entity)
                assert entity["word"].strip() == entity["word"], (strategy, entity)
                assert 0 < entity["score"] <= 1
                previous_end = end
                if strategy != "none":
                    assert not any(ws < start < we or ws < end < we for ws, we in words), (
                        f"{strategy} split a word: {entity} in {words}")
            if ignore == []:
                # Nothing ignored: every token is answered, so no character goes unread.
                covered = sum(e["end"] - e["start"] for e in entities)
                assert (covered > 0) == bool(_tokenized_words(tokenizer, text))
