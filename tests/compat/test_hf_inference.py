"""`huggingface_hub.InferenceClient`, unchanged, pointed at a fine-tuned model's predict URL."""

from __future__ import annotations

import pytest
from huggingface_hub import InferenceClient

from tests.compat.conftest import TrainedServer

pytestmark = pytest.mark.e2e
LABELS = {"negative", "positive"}


@pytest.fixture(scope="module")
def hf(trained: TrainedServer) -> InferenceClient:
    return InferenceClient(model=trained.predict_url, token=trained.service.api_key,
                           timeout=120)


def test_text_classification_all_labels(hf: InferenceClient) -> None:
    result = hf.text_classification("a gorgeous, witty and deeply moving film")
    assert {r.label for r in result} == LABELS
    scores = [r.score for r in result]
    assert scores == sorted(scores, reverse=True)
    assert sum(scores) == pytest.approx(1.0, abs=1e-3)
    assert result[0].label == "positive", result


def test_text_classification_negative(hf: InferenceClient) -> None:
    result = hf.text_classification("a dull, tedious mess with no wit at all")
    assert result[0].label == "negative", result


def test_text_classification_top_k(hf: InferenceClient) -> None:
    full = hf.text_classification("the acting is fine but the plot drags")
    top = hf.text_classification("the acting is fine but the plot drags", top_k=1)
    assert len(top) == 1 and top[0].label == full[0].label
    assert top[0].score == pytest.approx(full[0].score, abs=1e-6)


def test_text_classification_function_to_apply(hf: InferenceClient) -> None:
    result = hf.text_classification("a warm and funny story", function_to_apply="softmax")
    assert {r.label for r in result} == LABELS


def test_model_given_per_call(trained: TrainedServer) -> None:
    client = InferenceClient(token=trained.service.api_key, timeout=120)
    result = client.text_classification("an utterly charming film", model=trained.predict_url)
    assert {r.label for r in result} == LABELS
