"""Dynamic batching: concurrent requests share forward passes, and each caller gets exactly
what it would have got alone, in order; a bad input fails its own request only; a cancelled
request runs no further rows."""

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request
from transformers import AutoTokenizer

from app.api.deps import cancel_on_disconnect
from app.errors import InvalidRequest
from app.ml.inference import LoadedModel, load_model
from app.ml.serving import (
    BatchLimits,
    BatchRunner,
    RunnerClosed,
    _Request,
    _Row,
    forward_chunks,
)
from app.ml.tasks.base import TaskAdapter
from app.ml.tasks.classification import TextClassification
from app.ml.tasks.language_modeling import MaskedLanguageModeling
from app.ml.tasks.token_classification import TokenClassification
from tests.together import at_once
from tests.unit.tiny_model import NEGATIVE_WORDS, NEUTRAL_WORDS, POSITIVE_WORDS

WORDS = POSITIVE_WORDS + NEGATIVE_WORDS + NEUTRAL_WORDS
TOLERANCE = 1e-4


def sentences(n: int, seed: int) -> list[str]:
    """`n` sentences of varied length (1 to 20 words), different for each seed."""
    return [" ".join(WORDS[(seed * 7 + i * 3 + j) % len(WORDS)]
                     for j in range(1 + (seed + i * 5) % 20)) for i in range(n)]


def saved_version(task: TaskAdapter, base: Path, root: Path, name: str,
                  labels: list[str] | None) -> Path:
    model = task.load_model(base, labels)
    model.save_pretrained(root / name)
    AutoTokenizer.from_pretrained(base).save_pretrained(root / name)
    return root / name


@pytest.fixture(scope="module")
def models(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> dict[str, LoadedModel]:
    root = tmp_path_factory.mktemp("served")
    specs: list[tuple[str, TaskAdapter, list[str] | None]] = [
        ("classifier", TextClassification(), ["neg", "neu", "pos"]),
        ("ner", TokenClassification(), ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]),
        ("fill", MaskedLanguageModeling(), None),
    ]
    return {name: load_model(task, saved_version(task, tiny_model_dir, root, name, labels), 32)
            for name, task, labels in specs}


class Gate:
    """The real predict of a model, held at its first pass until released: requests queued
    meanwhile are all waiting together when the runner next gathers."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.entered = threading.Event()
        self.release = threading.Event()
        self.seen: list[list[str]] = []

    def __call__(self, inputs: list[str], parameters: dict[str, Any]) -> list[Any]:
        self.entered.set()
        self.release.wait(timeout=30)
        self.seen.append(list(inputs))
        return self.loaded.predict(inputs, parameters)


@pytest.fixture
def runners() -> Iterator[list[BatchRunner]]:
    started: list[BatchRunner] = []
    yield started
    for runner in started:
        runner.close()
        runner.join(timeout=30)


def gated_runner(runners: list[BatchRunner], loaded: LoadedModel,
                 limits: BatchLimits | None = None,
                 first: str = "good") -> tuple[BatchRunner, Gate]:
    """A runner already busy with a first request (`first`) held at the gate."""
    gate = Gate(loaded)
    runner = BatchRunner("test", gate, loaded.count_tokens, limits)
    runners.append(runner)
    runner.submit([first], {})
    assert gate.entered.wait(timeout=30)
    return runner, gate


def assert_same(batched: Any, alone: Any) -> None:
    """Equal structures, floats within tolerance (padding alongside other rows changes the
    last bits of a score)."""
    if isinstance(alone, float):
        assert batched == pytest.approx(alone, abs=TOLERANCE)
    elif isinstance(alone, dict):
        assert batched.keys() == alone.keys()
        for key in alone:
            assert_same(batched[key], alone[key])
    elif isinstance(alone, list):
        assert len(batched) == len(alone)
        for b, a in zip(batched, alone, strict=True):
            assert_same(b, a)
    else:
        assert batched == alone


def results(futures: list[concurrent.futures.Future[list[Any]]]) -> list[list[Any]]:
    return [future.result(timeout=60) for future in futures]


@pytest.mark.parametrize(("model", "parameters"), [
    ("classifier", {}), ("classifier", {"top_k": 1}),
    ("ner", {"aggregation_strategy": "none"}), ("ner", {}),
])
def test_concurrent_requests_share_passes_and_each_gets_its_own_rows(
        models: dict[str, LoadedModel], runners: list[BatchRunner], model: str,
        parameters: dict[str, Any]) -> None:
    loaded = models[model]
    runner, gate = gated_runner(runners, loaded)
    requests = [sentences(1 + i % 4, seed=i) for i in range(12)]
    futures = [runner.submit(inputs, parameters) for inputs in requests]
    gate.release.set()
    for inputs, batched in zip(requests, results(futures), strict=True):
        assert_same(batched, loaded.predict(inputs, parameters))
    # The first request ran alone while the others queued; they then shared passes.
    assert gate.seen[0] == ["good"]
    assert runner.passes - 1 < len(requests)
    assert any(len(seen) > 4 for seen in gate.seen[1:])


def test_fill_mask_batches_too(models: dict[str, LoadedModel],
                               runners: list[BatchRunner]) -> None:
    loaded = models["fill"]
    runner, gate = gated_runner(runners, loaded, first="the [MASK] film")
    requests = [[f"the {word} was [MASK] and {word}"] for word in WORDS[:6]] + \
        [["[MASK] film", "a very long story and the [MASK] acting was really fun"]]
    futures = [runner.submit(inputs, {"top_k": 3}) for inputs in requests]
    gate.release.set()
    for inputs, batched in zip(requests, results(futures), strict=True):
        assert_same(batched, loaded.predict(inputs, {"top_k": 3}))
    assert runner.passes - 1 < len(requests)


def test_a_large_request_is_split_and_small_ones_merged(models: dict[str, LoadedModel],
                                                        runners: list[BatchRunner]) -> None:
    loaded = models["classifier"]
    runner, gate = gated_runner(runners, loaded, BatchLimits(max_batch_rows=8))
    large = sentences(30, seed=3)
    small = [sentences(1, seed=s) for s in range(4)]
    futures = [runner.submit(large, {})] + [runner.submit(inputs, {}) for inputs in small]
    gate.release.set()
    for inputs, batched in zip([large, *small], results(futures), strict=True):
        assert_same(batched, loaded.predict(inputs, {}))
    assert all(len(seen) <= 8 for seen in gate.seen)
    assert sum(len(seen) for seen in gate.seen) == 1 + 30 + 4  # every row exactly once


def test_different_parameters_never_share_a_pass(models: dict[str, LoadedModel],
                                                 runners: list[BatchRunner]) -> None:
    loaded = models["classifier"]
    runner, gate = gated_runner(runners, loaded)
    top1 = [runner.submit(sentences(2, seed=s), {"top_k": 1}) for s in range(3)]
    every = [runner.submit(sentences(2, seed=s), {}) for s in range(3)]
    gate.release.set()
    assert all(len(output) == 1 for request in results(top1) for output in request)
    assert all(len(output) == 3 for request in results(every) for output in request)


def test_a_bad_input_fails_only_its_own_request(models: dict[str, LoadedModel],
                                                runners: list[BatchRunner]) -> None:
    loaded = models["fill"]
    runner, gate = gated_runner(runners, loaded, first="the [MASK] film")
    good = [runner.submit([f"the {w} was [MASK]"], {}) for w in WORDS[:3]]
    bad = runner.submit(["the [MASK] film", "no mask here"], {})
    more = [runner.submit([f"a [MASK] {w}"], {}) for w in WORDS[3:6]]
    gate.release.set()
    with pytest.raises(InvalidRequest) as raised:
        bad.result(timeout=60)
    # The error it would have had alone: it names the input within its own request.
    assert raised.value.param == "inputs[1]"
    for future in good + more:
        assert len(future.result(timeout=60)) == 1


def test_a_cancelled_request_runs_no_rows(models: dict[str, LoadedModel],
                                          runners: list[BatchRunner]) -> None:
    loaded = models["classifier"]
    runner, gate = gated_runner(runners, loaded)
    gone = runner.submit(["never run, client gone"], {})
    kept = runner.submit(["the film was fun"], {})
    assert gone.cancel()
    gate.release.set()
    assert len(kept.result(timeout=60)) == 1
    assert all("never run, client gone" not in seen for seen in gate.seen)


def test_cancelling_the_awaiting_task_cancels_the_request(models: dict[str, LoadedModel],
                                                          runners: list[BatchRunner]) -> None:
    loaded = models["classifier"]
    runner, gate = gated_runner(runners, loaded)

    async def scenario() -> list[Any]:
        waiting = asyncio.ensure_future(runner.predict(["abandoned"], {}))
        kept = asyncio.ensure_future(runner.predict(["the plot was dull"], {}))
        await asyncio.sleep(0.05)
        waiting.cancel()
        await asyncio.sleep(0.05)  # the cancellation reaches the runner's future
        gate.release.set()
        return await kept

    assert len(asyncio.run(scenario())) == 1
    assert all("abandoned" not in seen for seen in gate.seen)


def test_a_client_that_disconnects_costs_no_rows(models: dict[str, LoadedModel],
                                                 runners: list[BatchRunner]) -> None:
    loaded = models["classifier"]
    runner, gate = gated_runner(runners, loaded)

    async def scenario() -> Any:
        gone = asyncio.Event()

        async def receive() -> dict[str, Any]:
            await gone.wait()
            return {"type": "http.disconnect"}

        request = Request({"type": "http", "method": "POST", "path": "/", "headers": []},
                          receive)
        answer = asyncio.ensure_future(
            cancel_on_disconnect(request, runner.predict(["hung up"], {})))
        await asyncio.sleep(0.05)
        gone.set()
        outcome = await answer
        await asyncio.sleep(0.05)  # the cancellation reaches the runner's future
        gate.release.set()
        await asyncio.wrap_future(runner.submit(["after"], {}))
        return outcome

    assert asyncio.run(scenario()) is None
    assert all("hung up" not in seen for seen in gate.seen)


def test_a_closed_runner_serves_its_queue_then_refuses(models: dict[str, LoadedModel],
                                                       runners: list[BatchRunner]) -> None:
    loaded = models["classifier"]
    runner, gate = gated_runner(runners, loaded)
    queued = [runner.submit(sentences(2, seed=s), {}) for s in range(3)]
    runner.close()
    gate.release.set()
    assert all(len(request) == 2 for request in results(queued))
    with pytest.raises(RunnerClosed):
        runner.submit(["too late"], {})
    runner.join(timeout=30)


def test_many_threads_at_once_each_get_their_rows(models: dict[str, LoadedModel],
                                                  runners: list[BatchRunner]) -> None:
    loaded = models["classifier"]
    runner = BatchRunner("threads", loaded.predict, loaded.count_tokens)
    runners.append(runner)
    requests = [sentences(1 + i % 3, seed=100 + i) for i in range(32)]
    outputs = at_once([lambda inputs=inputs: runner.submit(inputs, {}).result(timeout=60)
                       for inputs in requests])
    for i, inputs in enumerate(requests):
        assert_same(outputs[i], loaded.predict(inputs, {}))
    assert runner.passes < len(requests)


def _rows(lengths: list[int]) -> list[_Row]:
    request = _Request([str(n) for n in lengths], {}, "")
    request.lengths = lengths
    return [_Row(request, i) for i in range(len(lengths))]


def test_forward_chunks_keep_every_row_within_budget_and_group_by_length() -> None:
    lengths = [5, 60, 7, 6, 58, 8, 61, 5, 200, 6]
    chunks = forward_chunks(_rows(lengths), max_tokens=150)
    assert sorted(row.index for chunk in chunks for row in chunk) == list(range(len(lengths)))
    for chunk in chunks:
        assert len(chunk) == 1 or len(chunk) * max(row.length for row in chunk) <= 150
    # Short rows are not padded to the long ones' length.
    assert any(max(row.length for row in chunk) <= 8 for chunk in chunks)
    assert [len(c) for c in forward_chunks(_rows([10] * 40), max_tokens=10_000)] == [40]


def test_the_configured_thread_count_is_applied_before_the_first_pass(
        models: dict[str, LoadedModel], runners: list[BatchRunner]) -> None:
    loaded = models["classifier"]
    threads_set: list[int] = []
    runner = BatchRunner("threads", loaded.predict, loaded.count_tokens,
                         BatchLimits(threads=3), set_threads=threads_set.append)
    runners.append(runner)
    results([runner.submit(["good"], {}), runner.submit(["fine", "bad"], {})])
    assert threads_set == [3]


def _slow_runner(runners: list[BatchRunner], max_wait_s: float
                 ) -> tuple[BatchRunner, list[list[str]], threading.Event]:
    """A runner over a model whose passes take 0.2 s, its first pass held until released."""
    seen: list[list[str]] = []
    release = threading.Event()

    def predict(inputs: list[str], parameters: dict[str, Any]) -> list[Any]:
        release.wait(timeout=30)
        time.sleep(0.2)
        seen.append(list(inputs))
        return [len(text) for text in inputs]

    runner = BatchRunner("slow", predict, lambda texts: [len(t) for t in texts],
                         BatchLimits(max_wait_s=max_wait_s))
    runners.append(runner)
    return runner, seen, release


def _steady_stream(runner: BatchRunner, callers: int, gap_s: float) -> None:
    """A loaded round of `callers` requests, then the same callers back one by one."""
    results([runner.submit([f"caller {i}"], {}) for i in range(callers)])
    futures = []
    for i in range(callers):
        futures.append(runner.submit([f"again {i}"], {}))
        time.sleep(gap_s)
    results(futures)


@pytest.mark.parametrize(("max_wait_s", "first_pass_rows"), [(0.05, 4), (0.0, 1)])
def test_under_load_the_runner_waits_briefly_for_the_last_rounds_callers(
        runners: list[BatchRunner], max_wait_s: float, first_pass_rows: int) -> None:
    runner, seen, release = _slow_runner(runners, max_wait_s)
    held = runner.submit(["first"], {})  # a lone pass, held: the next round is shared
    time.sleep(0.05)
    release_after_queueing = threading.Timer(0.05, release.set)
    release_after_queueing.start()
    _steady_stream(runner, callers=4, gap_s=0.005)
    results([held])
    again = [rows for rows in seen if rows[0].startswith("again")]
    # With the wait, the four returning callers share one pass; without it, the first one
    # back gets a pass of its own and the others queue behind it.
    assert len(again[0]) == first_pass_rows, seen
