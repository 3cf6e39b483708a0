"""The serving model cache: reuse, least-recently-used eviction, explicit eviction."""

import threading
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from app.ml.inference import LoadedModel, ModelCache, load_model
from app.ml.tasks.classification import TextClassification


@pytest.fixture(scope="module")
def versions(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three saved classifier versions (model + tokenizer), as the registry stores them."""
    task = TextClassification()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    root = tmp_path_factory.mktemp("versions")
    found = {}
    for name, labels in (("a", ["neg", "pos"]), ("b", ["x", "y", "z"]), ("c", ["p", "q"])):
        model = task.load_model(tiny_model_dir, labels)
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        found[name] = root / name
    return found


def get(cache: ModelCache, versions: dict[str, Path], key: str) -> LoadedModel:
    return cache.get(key, TextClassification(), versions[key], 32)


def test_load_model_is_ready_to_predict(versions: dict[str, Path]) -> None:
    loaded = load_model(TextClassification(), versions["b"], 16)
    assert loaded.max_length == 16
    assert not loaded.model.training
    (output,) = loaded.predict(["good film"], {})
    assert {item["label"] for item in output} == {"x", "y", "z"}


def test_same_key_is_loaded_once(versions: dict[str, Path]) -> None:
    cache = ModelCache(2)
    first = get(cache, versions, "a")
    assert get(cache, versions, "a") is first


def test_least_recently_used_is_evicted(versions: dict[str, Path]) -> None:
    cache = ModelCache(2)
    a, b = get(cache, versions, "a"), get(cache, versions, "b")
    assert get(cache, versions, "a") is a  # a is now the most recently used
    c = get(cache, versions, "c")  # over capacity: b goes
    assert get(cache, versions, "a") is a
    assert get(cache, versions, "c") is c
    b_again = get(cache, versions, "b")
    assert b_again is not b  # reloaded from disk
    assert b_again.model.config.num_labels == 3
    # Loading b again pushed out the least recently used of a and c, which is a.
    assert get(cache, versions, "c") is c
    assert get(cache, versions, "a") is not a


def test_evict_forces_a_reload(versions: dict[str, Path]) -> None:
    cache = ModelCache(4)
    a = get(cache, versions, "a")
    cache.evict("a")
    cache.evict("never-loaded")  # no error
    assert get(cache, versions, "a") is not a


def test_capacity_is_at_least_one(versions: dict[str, Path]) -> None:
    cache = ModelCache(0)
    assert cache.capacity == 1
    a = get(cache, versions, "a")
    assert get(cache, versions, "a") is a
    get(cache, versions, "b")
    assert get(cache, versions, "a") is not a


def test_concurrent_requests_share_one_load(versions: dict[str, Path]) -> None:
    cache = ModelCache(2)
    results: list[LoadedModel] = []
    barrier = threading.Barrier(6)

    def worker() -> None:
        barrier.wait()
        results.append(get(cache, versions, "c"))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 6
    assert all(result is results[0] for result in results)
