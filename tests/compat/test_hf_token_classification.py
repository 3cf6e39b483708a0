"""`huggingface_hub.InferenceClient.token_classification`, unchanged, against a NER model
fine-tuned over plain HTTP on a small CoNLL-2003 slice (quality is the e2e suite's concern)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.inference._generated.types import TokenClassificationOutputElement

from tests.live import (
    LiveService,
    data_root,
    expect,
    live_service,
    read_jsonl,
    upload_jsonl,
    wait_for_job,
)

pytestmark = pytest.mark.e2e
TRAIN_SENTENCES = 300
TEXT = "  Peter Blackburn (BRUSSELS) said: Zoë's café 😀 in São Paulo beat Ajax 2-1!"
STRATEGIES = ("none", "simple", "first", "average", "max")
Strategy = Literal["none", "simple", "first", "average", "max"]


@pytest.fixture(scope="module")
def ner_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveService, str]]:
    rows = read_jsonl(data_root() / "conll2003" / "train.jsonl", TRAIN_SENTENCES)
    root: Path = tmp_path_factory.mktemp("compat-ner")
    with live_service(root) as service, service.client() as client:
        training = upload_jsonl(client, "conll.jsonl", rows)
        created = expect(client.post("/v1/fine_tuning/jobs", json={
            "model": "minilm-l6", "training_file": training["id"], "suffix": "compat-ner",
            "hyperparameters": {"n_epochs": 1, "batch_size": 8, "learning_rate": 3e-4}}), 201)
        job = wait_for_job(service, client, created["id"])
        yield service, job["fine_tuned_model"]


@pytest.fixture(scope="module")
def hf(ner_server: tuple[LiveService, str]) -> InferenceClient:
    service, model = ner_server
    url = f"{service.api_url}/models/{quote(model, safe='')}/predict"
    return InferenceClient(model=url, token=service.api_key, timeout=120)


def _raw(ner_server: tuple[LiveService, str], parameters: dict[str, Any]) -> Any:
    service, model = ner_server
    with service.client() as client:
        return expect(client.post(f"/v1/models/{model}/predict",
                                  json={"inputs": TEXT, "parameters": parameters}))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_token_classification_parses_with_offsets_into_the_text(
        hf: InferenceClient, ner_server: tuple[LiveService, str], strategy: Strategy) -> None:
    # ignore_labels=[]: every token or group is answered, so the list cannot be empty.
    result = hf.token_classification(TEXT, aggregation_strategy=strategy, ignore_labels=[])
    assert result and all(isinstance(e, TokenClassificationOutputElement) for e in result)
    for element in result:
        assert TEXT[element.start:element.end] == element.word, element
        assert 0 < element.score <= 1
        label = element.entity if strategy == "none" else element.entity_group
        assert label, element
    raw = _raw(ner_server, {"aggregation_strategy": strategy, "ignore_labels": []})
    assert [(e.start, e.end, e.word) for e in result] == [
        (e["start"], e["end"], e["word"]) for e in raw]


def test_token_classification_default_groups_entities(hf: InferenceClient) -> None:
    result = hf.token_classification(TEXT)
    assert all(e.entity_group and e.entity_group != "O" for e in result), result
    assert result == hf.token_classification(TEXT, aggregation_strategy="simple")


def test_token_classification_ignore_labels_and_stride(hf: InferenceClient) -> None:
    everything = hf.token_classification(TEXT, aggregation_strategy="first", ignore_labels=[])
    kinds = {e.entity_group or "" for e in everything}
    assert "O" in kinds
    # An entity kind where the model finds one (which ones is the model's numerics), else
    # "O"; never set.pop(), whose pick changes with the interpreter's string hashing.
    dropped = min(kinds - {"O"}, default="O")
    kept = hf.token_classification(TEXT, aggregation_strategy="first",
                                   ignore_labels=[dropped])
    assert {e.entity_group for e in kept} == {e.entity_group for e in everything} - {dropped}
    assert hf.token_classification(TEXT, stride=8) is not None
