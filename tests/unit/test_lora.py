"""LoRA on a tiny BERT: where adapters go, what a checkpoint holds, resume, merging, and
serving several adapter versions over one copy of their base."""

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from app.errors import InvalidRequest
from app.ml.hyperparameters import DataProfile, LoraSettings, resolve
from app.ml.inference import ModelCache, load_model
from app.ml.lora import (
    ADAPTER_WEIGHTS,
    add_adapter,
    finish_checkpoint,
    is_adapter,
    merged,
    with_adapters,
)
from app.ml.search import LEARNING_RATE_SPREAD, search_plan, trial_hyperparameters
from app.ml.tasks.classification import TextClassification
from app.ml.tasks.multi_label import THRESHOLDS_KEY, MultiLabelClassification
from app.ml.tasks.token_classification import TokenClassification
from app.ml.training import TrainingPlan, fine_tune, latest_checkpoint
from tests.unit.test_multi_label import mood_rows
from tests.unit.test_training import EVAL_ROWS, TRAIN_ROWS, RecordingObserver

TASK = TextClassification()
MULTI_LABEL = MultiLabelClassification()
LORA = LoraSettings(r=4, alpha=8, dropout=0.0)
# MiniLM and 800 rows: 50 optimizer steps in one epoch, so the rate is doubled.
PROFILE = DataProfile(n_rows=800, parameters=22_713_728)
TEXTS = ["the film was good and great", "the plot was bad and dull", "it is ok"]


def lora_plan(model_dir: Path, output_dir: Path, **raw: Any) -> TrainingPlan:
    hyperparameters = resolve({"n_epochs": 2, "batch_size": 4, "learning_rate": 1e-2,
                               "max_length": 32, "lora": dataclasses.asdict(LORA), **raw},
                              len(TRAIN_ROWS))
    return TrainingPlan(task=TASK, base_model=str(model_dir), train_rows=TRAIN_ROWS,
                        eval_rows=EVAL_ROWS, labels=TASK.labels(TRAIN_ROWS),
                        hyperparameters=hyperparameters, seed=0, output_dir=output_dir)


def adapter_version(base_dir: Path, folder: Path, labels: list[str], seed: int) -> Path:
    """A version folder as training leaves it, with adapters moved off their zero start."""
    torch.manual_seed(seed)
    model = with_adapters(TASK.load_model(base_dir, labels), LORA, TASK.name)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    model.save_pretrained(folder)  # type: ignore[operator]
    finish_checkpoint(model, folder)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(folder)
    return folder


def test_adapters_go_on_every_attention_and_feed_forward_layer(tiny_model_dir: Path) -> None:
    model = with_adapters(TASK.load_model(tiny_model_dir, ["neg", "pos"]), LORA, TASK.name)
    adapted = {name.removesuffix(".lora_A.default") for name, _ in model.named_modules()
               if name.endswith(".lora_A.default")}
    per_layer = {name.split(".layer.0.", 1)[1] for name in adapted if ".layer.0." in name}
    assert per_layer == {"attention.self.query", "attention.self.key", "attention.self.value",
                         "attention.output.dense", "intermediate.dense", "output.dense"}
    assert len(adapted) == 6 * 2  # both layers, nothing outside them (the pooler trains whole)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in name or ".modules_to_save." in name for name in trainable)
    assert any("classifier.modules_to_save" in name for name in trainable)
    assert any("pooler.modules_to_save" in name for name in trainable)


def test_token_classification_trains_its_classifier_alone(tiny_model_dir: Path) -> None:
    task = TokenClassification()
    model = with_adapters(task.load_model(tiny_model_dir, ["O", "B-PER", "I-PER"]), LORA,
                          task.name)
    heads = {name.split(".modules_to_save")[0] for name, p in model.named_parameters()
             if p.requires_grad and ".modules_to_save." in name}
    assert heads == {"base_model.model.classifier"}


def test_lora_is_refused_for_language_modelling_and_unknown_architectures(
        tiny_model_dir: Path) -> None:
    model = TASK.load_model(tiny_model_dir, ["neg", "pos"])
    with pytest.raises(InvalidRequest) as refused:
        with_adapters(model, LORA, "masked-lm")
    assert refused.value.code == "lora_unsupported" and "masked-lm" in refused.value.message
    model.config.model_type = "mystery"
    with pytest.raises(InvalidRequest, match="'mystery' architecture"):
        with_adapters(model, LORA, TASK.name)


def test_an_unknown_architecture_is_refused_before_any_process_starts(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    # Across processes an error inside a rank reads only as a failed process: the base is
    # checked before the launch, so the job fails with lora_unsupported as it does in one.
    base = tmp_path / "mystery-base"
    TASK.load_model(tiny_model_dir, ["neg", "pos"]).save_pretrained(base)
    config = base / "config.json"
    config.write_text(config.read_text().replace('"model_type": "bert"',
                                                 '"model_type": "mystery"'))
    plan = dataclasses.replace(lora_plan(tiny_model_dir, tmp_path / "job"),
                               base_model=str(base), processes=2)
    with pytest.raises(InvalidRequest, match="'mystery' architecture"):
        fine_tune(plan, RecordingObserver())
    assert not (tmp_path / "job").exists()  # nothing trained, nothing launched


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    plan = lora_plan(tiny_model_dir, tmp_path_factory.mktemp("lora") / "job")
    return plan, fine_tune(plan, RecordingObserver())


def test_the_checkpoint_holds_the_adapter_head_tokenizer_and_label_map(lora_run: Any) -> None:
    plan, result = lora_run
    folder = result.best_checkpoint
    assert result.stopped is None and is_adapter(folder)
    assert not (folder / "model.safetensors").exists() and not (folder / "README.md").exists()
    assert (folder / "tokenizer.json").is_file() or (folder / "vocab.txt").is_file()
    assert AutoTokenizer.from_pretrained(folder)("good")["input_ids"]
    with safe_open(str(folder / ADAPTER_WEIGHTS), "pt") as weights:
        names = list(weights.keys())  # noqa: SIM118 - safe_open is not a mapping
        stored = sum(weights.get_tensor(n).numel() for n in names)
    assert all("lora_" in n or "classifier" in n or "pooler" in n for n in names), names
    # Exactly the trainable weights: the adapters (r * (in + out) per layer) and the head.
    model = with_adapters(TASK.load_model(plan.base_model, plan.labels), LORA, TASK.name)
    assert stored == sum(p.numel() for p in model.parameters() if p.requires_grad)
    served = load_model(TASK, folder, 32, base=ModelCache(1 << 30).shared_base(plan.base_model))
    assert served.model.config.id2label == {0: "negative", 1: "positive"}


def test_paused_lora_run_resumes_from_its_adapter_checkpoint(tiny_model_dir: Path,
                                                            tmp_path: Path,
                                                            lora_run: Any) -> None:
    plan = lora_plan(tiny_model_dir, tmp_path / "job")
    assert fine_tune(plan, RecordingObserver(stop_reason="pause", stop_after=3)).stopped == \
        "pause"
    assert latest_checkpoint(plan.output_dir) == str(plan.output_dir / "checkpoint-3")
    assert is_adapter(plan.output_dir / "checkpoint-3")
    resumed = RecordingObserver()
    final = fine_tune(plan, resumed)
    assert resumed.progress[0]["step"] == 4 and final.final_step == 20
    # The same adapter as the uninterrupted run's.
    _, uninterrupted = lora_run
    for name in ("adapter_model.safetensors",):
        with safe_open(str(final.best_checkpoint / name), "pt") as a, \
                safe_open(str(uninterrupted.best_checkpoint / name), "pt") as b:
            for key in a.keys():  # noqa: SIM118 - safe_open is not a mapping
                torch.testing.assert_close(a.get_tensor(key), b.get_tensor(key))


def _logits(model: Any, tokenizer: Any) -> torch.Tensor:
    with torch.inference_mode():
        return model(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits


def test_merged_model_answers_as_the_adapter_does(tiny_model_dir: Path, tmp_path: Path) -> None:
    version = adapter_version(tiny_model_dir, tmp_path / "v", ["neg", "pos"], seed=1)
    tokenizer = AutoTokenizer.from_pretrained(version)
    unmerged = add_adapter(TASK.load_model(tiny_model_dir, ["neg", "pos"]), version).eval()
    plain = merged(TASK.load_model(tiny_model_dir, ["neg", "pos"]), version).eval()
    assert not any("lora_" in name for name, _ in plain.named_parameters())
    plain.save_pretrained(tmp_path / "merged")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    expected = _logits(unmerged, tokenizer)
    assert not torch.allclose(expected, _logits(TASK.load_model(
        tiny_model_dir, ["neg", "pos"]).eval(), tokenizer))  # the adapter changes answers
    torch.testing.assert_close(_logits(plain, tokenizer), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(_logits(reloaded, tokenizer), expected, atol=1e-4, rtol=1e-4)


def test_adapter_versions_of_one_base_share_its_weights_in_the_cache(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    first = adapter_version(tiny_model_dir, tmp_path / "a", ["neg", "pos"], seed=1)
    second = adapter_version(tiny_model_dir, tmp_path / "b", ["x", "y", "z"], seed=2)
    cache = ModelCache(1 << 30, precision="fp32")
    try:
        a = cache.get("a", TASK, first, 32, base_source=str(tiny_model_dir))
        b = cache.get("b", TASK, second, 32, base_source=str(tiny_model_dir))
        query = "bert.encoder.layer.0.attention.self.query.base_layer.weight"
        assert a.model.get_parameter(query).data_ptr() == b.model.get_parameter(query).data_ptr()
        assert a.base is b.base is not None
        again = load_model(TASK, first, 32, base=cache.shared_base(str(tiny_model_dir)))
        whole_model = sum(t.numel() * t.element_size()
                          for t in TASK.load_model(tiny_model_dir, ["x", "y"]).state_dict()
                          .values())
        assert cache.loaded_bytes == a.base.size_bytes + a.size_bytes + b.size_bytes
        assert cache.loaded_bytes < 2 * whole_model
        assert again.base is a.base
        # Each version answers with its own adapter and labels, also when both runners run
        # at once: the same answers as each one alone, from a base of its own.
        assert a.runner is not None and b.runner is not None
        futures = [(runner.submit(TEXTS, {}), folder)
                   for _ in range(5) for runner, folder in ((a.runner, first),
                                                            (b.runner, second))]
        for future, folder in futures:
            alone = load_model(TASK, folder, 32, base=_private_base(tiny_model_dir))
            assert _top(future.result(timeout=30)) == _top(alone.predict(TEXTS, {}))
        assert {s["label"] for s in a.predict(TEXTS[:1], {})[0]} == {"neg", "pos"}
        assert {s["label"] for s in b.predict(TEXTS[:1], {})[0]} == {"x", "y", "z"}
    finally:
        cache.close()


def _private_base(base_dir: Path) -> Any:
    return ModelCache(1 << 30, precision="fp32").shared_base(str(base_dir))


def _top(outputs: list[Any]) -> list[tuple[str, float]]:
    return [(o[0]["label"], round(o[0]["score"], 4)) for o in outputs]


def test_evicting_one_adapter_version_keeps_the_base_for_the_other(tiny_model_dir: Path,
                                                                  tmp_path: Path) -> None:
    first = adapter_version(tiny_model_dir, tmp_path / "a", ["neg", "pos"], seed=1)
    second = adapter_version(tiny_model_dir, tmp_path / "b", ["neg", "pos"], seed=2)
    cache = ModelCache(1 << 30, precision="fp32")
    try:
        a = cache.get("a", TASK, first, 32, base_source=str(tiny_model_dir))
        b = cache.get("b", TASK, second, 32, base_source=str(tiny_model_dir))
        assert b.base is not None
        both = cache.loaded_bytes
        cache.evict("a")
        assert cache.loaded_bytes == both - a.size_bytes == b.base.size_bytes + b.size_bytes
    finally:
        cache.close()


def test_the_automatic_learning_rate_for_adapters_is_ten_times_higher_and_says_so() -> None:
    full = resolve({"n_epochs": 1}, PROFILE)
    lora = resolve({"n_epochs": 1, "lora": {"r": 8, "alpha": 16, "dropout": 0.1}}, PROFILE)
    assert lora.learning_rate == pytest.approx(10 * full.learning_rate) == pytest.approx(2e-3)
    assert "learning_rate 2e-03 because LoRA adapters" in " ".join(lora.reasons)
    assert lora.as_dict()["lora"] == {"r": 8, "alpha": 16, "dropout": 0.1}
    assert "lora" not in full.as_dict()


def test_a_search_trains_every_trial_with_adapters_around_the_lora_rate() -> None:
    raw = {"lora": {"r": 8, "alpha": 16, "dropout": 0.1}, "search": {"trials": 2}}
    auto = resolve(raw, PROFILE)  # 10 epochs of 50 steps: LoRA's 1e-3, not doubled
    assert auto.learning_rate == pytest.approx(1e-3)
    plan = search_plan(raw, auto, seed=0, greater_is_better=True)
    assert plan.space.learning_rate == pytest.approx((1e-3 / LEARNING_RATE_SPREAD,
                                                      1e-3 * LEARNING_RATE_SPREAD))
    trial = trial_hyperparameters(plan, {"learning_rate": 1e-3}, PROFILE)
    assert trial.lora == LoraSettings(8, 16, 0.1) and trial.learning_rate == 1e-3


def test_a_multi_label_adapter_serves_with_its_tuned_thresholds(tiny_model_dir: Path,
                                                                tmp_path: Path) -> None:
    rows = mood_rows(48)
    plan = TrainingPlan(task=MULTI_LABEL, base_model=str(tiny_model_dir), train_rows=rows[:40],
                        eval_rows=rows[40:], labels=MULTI_LABEL.labels(rows), seed=0,
                        hyperparameters=resolve({"n_epochs": 2, "batch_size": 8,
                                                 "learning_rate": 1e-2, "max_length": 16,
                                                 "lora": dataclasses.asdict(LORA)}, 40),
                        output_dir=tmp_path / "job")
    result = fine_tune(plan, RecordingObserver())
    assert result.best_checkpoint is not None and is_adapter(result.best_checkpoint)
    table = result.best_tables["per_label"]
    served = load_model(MULTI_LABEL, result.best_checkpoint, 16,
                        base=_private_base(tiny_model_dir))
    assert served.model.config.problem_type == "multi_label_classification"
    assert getattr(served.model.config, THRESHOLDS_KEY) == dict(
        zip(table["labels"], table["threshold"], strict=True))
    assert {item["label"] for item in served.predict(["good film"], {})[0]} == {"neg", "pos"}
