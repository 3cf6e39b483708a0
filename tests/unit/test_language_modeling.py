"""Continued pretraining on a tiny BERT (masked-LM) and a tiny GPT-2 (causal-LM)."""

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers.processors import TemplateProcessing
from transformers import (
    AutoModelForMaskedLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from app.errors import DatasetInvalid, InvalidRequest
from app.ml.hyperparameters import resolve
from app.ml.inference import load_model
from app.ml.tasks.catalog import detect_task, get_task
from app.ml.tasks.classification import TextClassification
from app.ml.tasks.language_modeling import CausalLanguageModeling, MaskedLanguageModeling
from app.ml.training import TrainingPlan, TrainingResult, fine_tune
from tests.unit.test_training import RecordingObserver
from tests.unit.tiny_model import (
    NEGATIVE_WORDS,
    POSITIVE_WORDS,
    SPECIAL_TOKENS,
    VOCAB,
    sentiment_rows,
)

TEXTS = [{"text": row["text"]} for row in sentiment_rows(48)]
MLM = MaskedLanguageModeling()
CLM = CausalLanguageModeling()
SENTIMENT_WORDS = set(POSITIVE_WORDS + NEGATIVE_WORDS)


def plan_for(task: Any, model_dir: Path, output_dir: Path, n_epochs: int = 2,
             learning_rate: float = 3e-3, **more: Any) -> TrainingPlan:
    hyperparameters = resolve({"n_epochs": n_epochs, "batch_size": 8,
                               "learning_rate": learning_rate, "max_length": 16, **more},
                              len(TEXTS))
    return TrainingPlan(task=task, base_model=str(model_dir), train_rows=TEXTS[:40],
                        eval_rows=TEXTS[40:], labels=task.labels(TEXTS), seed=0,
                        hyperparameters=hyperparameters, output_dir=output_dir)


# --- rows -----------------------------------------------------------------------------


def test_plain_text_rows_are_masked_lm_and_other_shapes_keep_their_task() -> None:
    assert detect_task({"text": "hello"}, 1).name == "masked-lm"
    assert detect_task({"text": "hello", "label": "x"}, 1).name == "text-classification"
    assert detect_task({"text": "hello", "labels": ["x"]}, 1).name == \
        "multi-label-classification"


def test_a_causal_lm_job_takes_a_file_detected_as_masked_lm() -> None:
    assert CLM.accepts_rows_of("masked-lm") and MLM.accepts_rows_of("causal-lm")
    assert not TextClassification().accepts_rows_of("masked-lm")
    assert not MLM.accepts_rows_of("text-classification")


@pytest.mark.parametrize(("row", "message"), [({"text": 3}, "must be a string, not int"),
                                              ({"text": "  "}, "is empty")])
def test_bad_text_names_line_and_field(row: dict[str, Any], message: str) -> None:
    with pytest.raises(DatasetInvalid, match=message) as caught:
        MLM.validate_row(row, 7)
    assert caught.value.line == 7 and caught.value.field == "text"


def test_long_texts_become_blocks_and_lose_nothing(tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    text = " ".join(["the movie was good and the plot was dull"] * 12)
    features = MLM.encode([{"text": text}], tiny_tokenizer, {}, 16)
    everything = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(features) == math.ceil(len(everything) / 14)
    bodies = []
    for feature in features:
        ids = feature["input_ids"]
        assert len(ids) <= 16 and feature["attention_mask"] == [1] * len(ids)
        assert ids[0] == tiny_tokenizer.cls_token_id and ids[-1] == tiny_tokenizer.sep_token_id
        bodies.extend(ids[1:-1])
    assert bodies == everything


# --- masked-LM ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def masked_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> tuple[RecordingObserver, TrainingResult]:
    observer = RecordingObserver()
    plan = plan_for(MLM, tiny_model_dir, tmp_path_factory.mktemp("mlm") / "job")
    torch.manual_seed(1234)
    return observer, fine_tune(plan, observer)


def test_masked_lm_reports_loss_and_perplexity_and_keeps_the_lowest_loss(
        masked_run: tuple[RecordingObserver, TrainingResult]) -> None:
    observer, result = masked_run
    assert result.stopped is None and result.best_checkpoint is not None
    losses = [metrics["loss"] for _, metrics in observer.evaluations]
    assert len(losses) == 2 and losses[1] < losses[0], losses  # it learns the vocabulary
    for _, metrics in observer.evaluations:
        assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]))
    assert result.best_metrics["loss"] == min(losses)
    assert result.best_checkpoint.name == f"checkpoint-{observer.evaluations[1][0]}"


def test_fill_mask_answers_in_the_hugging_face_shape(
        masked_run: tuple[RecordingObserver, TrainingResult]) -> None:
    _, result = masked_run
    assert result.best_checkpoint is not None
    loaded = load_model(get_task("masked-lm"), result.best_checkpoint, 16)
    [candidates] = loaded.predict(["the movie was [MASK]"], {"top_k": 3})
    assert len(candidates) == 3
    assert [c["score"] for c in candidates] == sorted((c["score"] for c in candidates),
                                                      reverse=True)
    # Whichever words this host's numerics rank first: every candidate is a plain word.
    for candidate in candidates:
        assert candidate["token"] >= len(SPECIAL_TOKENS)
        assert VOCAB[candidate["token"]] == candidate["token_str"]
        assert candidate["sequence"] == f"the movie was {candidate['token_str']}"
    assert MLM.response([candidates], batched=False) == candidates


PROMPT = "the movie was [MASK]"
BLANK = " "  # a token that decodes to whitespace alone


@pytest.fixture(scope="module")
def babbling_dir(masked_run: tuple[RecordingObserver, TrainingResult],
                 tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pretrained version with a blank token added, and its output biased so that every
    special token and the blank one rank above every word for PROMPT: what an undertrained
    model does on some hosts, made certain on all of them."""
    _, result = masked_run
    assert result.best_checkpoint is not None
    directory = tmp_path_factory.mktemp("babbling") / "model"
    tokenizer = AutoTokenizer.from_pretrained(result.best_checkpoint)
    tokenizer.add_tokens([BLANK])
    model = AutoModelForMaskedLM.from_pretrained(result.best_checkpoint)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.eval()
    non_words = _non_words(tokenizer)
    with torch.no_grad():
        logits = _mask_logits(model, tokenizer)
        best_word = logits[_words(tokenizer)].max()
        # Each non-word lands a clear margin above the best word; the words keep their order.
        model.cls.predictions.bias[non_words] += best_word + 2.0 - logits[non_words]
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def _mask_logits(model: Any, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    batch = tokenizer(PROMPT, return_tensors="pt")
    [position] = (batch["input_ids"][0] == tokenizer.mask_token_id).nonzero()[:, 0].tolist()
    return model(**batch).logits[0, position]


def _non_words(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    return [*tokenizer.all_special_ids, tokenizer.get_vocab()[BLANK]]


def _words(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    return [token for token in range(len(tokenizer)) if token not in _non_words(tokenizer)]


def test_fill_mask_never_proposes_a_special_or_blank_token(babbling_dir: Path) -> None:
    loaded = load_model(get_task("masked-lm"), babbling_dir, 16)
    tokenizer = loaded.tokenizer
    with torch.inference_mode():
        probabilities = torch.softmax(_mask_logits(loaded.model, tokenizer).float(), dim=-1)
    non_words = _non_words(tokenizer)
    ranked = probabilities.argsort(descending=True).tolist()
    assert sorted(ranked[:len(non_words)]) == sorted(non_words)  # the model's own favourites

    [candidates] = loaded.predict([PROMPT], {"top_k": 3})
    # Still three candidates: the three likeliest words, at their probability.
    assert [c["token"] for c in candidates] == [t for t in ranked if t not in non_words][:3]
    for candidate in candidates:
        assert candidate["token_str"] == VOCAB[candidate["token"]] != ""
        assert candidate["score"] == pytest.approx(float(probabilities[candidate["token"]]))


@pytest.mark.parametrize("text", ["no mask here", "two [MASK] and [MASK]"])
def test_fill_mask_needs_exactly_one_mask(
        masked_run: tuple[RecordingObserver, TrainingResult], text: str) -> None:
    _, result = masked_run
    assert result.best_checkpoint is not None
    loaded = load_model(get_task("masked-lm"), result.best_checkpoint, 16)
    with pytest.raises(InvalidRequest, match="exactly one \\[MASK\\]") as caught:
        loaded.predict(["the [MASK] was good", text], {})
    assert caught.value.param == "inputs[1]"


def test_a_pretrained_version_is_a_base_for_classification(
        masked_run: tuple[RecordingObserver, TrainingResult]) -> None:
    _, result = masked_run
    assert result.best_checkpoint is not None
    model = TextClassification().load_model(result.best_checkpoint, ["negative", "positive"])
    trained = MLM.load_model(result.best_checkpoint)
    # The encoder carries over; only the head is new.
    assert torch.equal(model.base_model.embeddings.word_embeddings.weight,
                       trained.base_model.embeddings.word_embeddings.weight)
    assert model.config.num_labels == 2


# --- causal-LM ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_gpt2_dir(tiny_tokenizer: PreTrainedTokenizerBase,
                  tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random GPT-2, with the tiny BERT's words in a decoder's tokenizer: [CLS] opens
    a text as its beginning token, and nothing closes it. (BERT's own tokenizer would end
    every prompt with [SEP], the end of text, and ask the model to go on from there.)"""
    directory = tmp_path_factory.mktemp("gpt2") / "tiny-gpt2"
    words = copy.deepcopy(tiny_tokenizer.backend_tokenizer)
    words.post_processor = TemplateProcessing(
        single="[CLS] $A", special_tokens=[("[CLS]", tiny_tokenizer.cls_token_id)])
    PreTrainedTokenizerFast(tokenizer_object=words, bos_token="[CLS]", eos_token="[SEP]",
                            pad_token="[PAD]", unk_token="[UNK]").save_pretrained(directory)
    config = GPT2Config(vocab_size=len(VOCAB), n_embd=32, n_layer=1, n_head=2, n_positions=64,
                        bos_token_id=2, eos_token_id=3, pad_token_id=0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        GPT2LMHeadModel(config).save_pretrained(directory, safe_serialization=True)
    return directory


def test_causal_lm_trains_and_continues_a_prompt(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    observer = RecordingObserver()
    # Long enough to learn the rows' pattern, "the <word> was <sentiment> and <sentiment>",
    # so what follows a prompt is the data's doing rather than the random start's.
    # A random tiny model at a rate 100x a real fine-tune's learns the pattern fast, and
    # steadily only with its gradients clipped.
    plan = plan_for(CLM, tiny_gpt2_dir, tmp_path / "job", n_epochs=4, learning_rate=3e-2,
                    max_grad_norm=1.0)
    result = fine_tune(plan, observer)
    assert result.stopped is None and result.best_checkpoint is not None
    losses = [metrics["loss"] for _, metrics in observer.evaluations]
    assert losses[-1] < losses[0], losses

    loaded = load_model(get_task("causal-lm"), result.best_checkpoint, 16)
    [[generation]] = loaded.predict(["the movie was"], {"max_new_tokens": 3})
    text = generation["generated_text"]
    # Which sentiment word comes first is a near tie; that one does, then "and", is not.
    assert text.startswith("the movie was "), text
    words = text.removeprefix("the movie was ").split()
    assert len(words) == 3 and words[1] == "and", text
    assert {words[0], words[2]} <= SENTIMENT_WORDS, text
