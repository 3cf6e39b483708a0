"""The token-classification adapter: row validation, spans to tags, sub-token alignment,
windows, metrics, aggregation and prediction, with a tiny BERT built from a config."""

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForTokenClassification,
    BertTokenizerFast,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from app.errors import DatasetInvalid
from app.ml.hyperparameters import resolve
from app.ml.tasks.catalog import detect_task, get_task
from app.ml.tasks.token_classification import (
    IGNORED,
    TokenClassification,
    TokenScores,
    aggregate,
    entity_metrics,
    predict_time_words,
    tagged_words,
    windows,
)
from app.ml.training import TrainingPlan, fine_tune
from app.schemas.predict import PredictParameters
from tests.unit.test_training import RecordingObserver

# Whole words, and words that WordPiece splits ("merkel" = "mer" + "##kel").
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "angela", "mer", "##kel", "visited",
         "paris", "new", "york", "in", "the", "city", "of", "lives", "##s", "."]
LABELS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
ID2LABEL = dict(enumerate(LABELS))


@pytest.fixture(scope="module")
def ner_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random token-classification BERT with a WordPiece vocabulary that splits words."""
    directory = tmp_path_factory.mktemp("ner") / "tiny-ner"
    directory.mkdir()
    (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast.from_pretrained(directory, do_lower_case=True,
                                                  model_max_length=64)
    tokenizer.save_pretrained(directory)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=37,
                        max_position_embeddings=64, initializer_range=0.5,
                        num_labels=len(LABELS), id2label=ID2LABEL,
                        label2id={label: i for i, label in enumerate(LABELS)})
    torch.manual_seed(0)
    BertForTokenClassification(config).save_pretrained(directory, safe_serialization=True)
    return directory


@pytest.fixture(scope="module")
def ner_tokenizer(ner_model_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(ner_model_dir)


@pytest.fixture
def ner() -> TokenClassification:
    return TokenClassification()


# --- detection and tokens rows --------------------------------------------------------


@pytest.mark.parametrize("row", [{"tokens": ["a"], "tags": ["O"]},
                                 {"text": "a", "entities": []}])
def test_detect_task_token_classification(row: dict) -> None:
    assert detect_task(row, 1).name == "token-classification"
    assert isinstance(get_task("token-classification"), TokenClassification)


def test_tokens_row_is_kept_as_is(ner: TokenClassification) -> None:
    row = {"tokens": ["Angela", "Merkel", "."], "tags": ["B-PER", "I-PER", "O"], "id": 3}
    assert ner.validate_row(row, 1) == {"tokens": ["Angela", "Merkel", "."],
                                        "tags": ["B-PER", "I-PER", "O"]}


@pytest.mark.parametrize("row,field,message", [
    ({"tags": ["O"]}, "tokens", "is missing"),
    ({"tokens": "a b", "tags": ["O"]}, "tokens", "must be a list, not str"),
    ({"tokens": [], "tags": []}, "tokens", "is empty"),
    ({"tokens": ["a", ""], "tags": ["O", "O"]}, "tokens[1]", "is an empty token"),
    ({"tokens": ["a", "  "], "tags": ["O", "O"]}, "tokens[1]", "is an empty token"),
    ({"tokens": ["a", 3], "tags": ["O", "O"]}, "tokens[1]", "must be a string, not int"),
    ({"tokens": ["a\ud800"], "tags": ["O"]}, "tokens[0]", "holds an unpaired UTF-16 surrogate"),
    ({"tokens": ["a"]}, "tags", "is missing"),
    ({"tokens": ["a", "b"], "tags": ["O"]}, "tags", "has 1 tags for 2 tokens"),
    ({"tokens": ["a"], "tags": ["PER"]}, "tags[0]",
     "'PER' is not a tag; use 'O', 'B-<type>' or 'I-<type>'"),
    ({"tokens": ["a"], "tags": ["B-"]}, "tags[0]",
     "'B-' is not a tag; use 'O', 'B-<type>' or 'I-<type>'"),
    ({"tokens": ["a"], "tags": ["S-PER"]}, "tags[0]",
     "'S-PER' is not a tag; use 'O', 'B-<type>' or 'I-<type>'"),
    ({"tokens": ["a"], "tags": [1]}, "tags[0]", "1 is not a tag; use 'O', 'B-<type>' or "
     "'I-<type>'"),
])
def test_tokens_row_errors_name_line_and_field(ner: TokenClassification, row: dict, field: str,
                                               message: str) -> None:
    with pytest.raises(DatasetInvalid) as info:
        ner.validate_row(row, 12)
    assert (info.value.line, info.value.field) == (12, field)
    assert info.value.message == f"line 12, field '{field}': {message}"


@pytest.mark.parametrize("tags,position,previous", [
    (["I-PER", "O"], 0, "the first tag"),
    (["O", "I-PER"], 1, "after 'O'"),
    (["B-LOC", "I-PER"], 1, "after 'B-LOC'"),
    (["B-PER", "I-PER", "I-LOC"], 2, "after 'I-PER'"),
])
def test_i_tag_that_does_not_continue_its_type_is_rejected(ner: TokenClassification,
                                                           tags: list[str], position: int,
                                                           previous: str) -> None:
    with pytest.raises(DatasetInvalid) as info:
        ner.validate_row({"tokens": ["w"] * len(tags), "tags": tags}, 5)
    assert info.value.field == f"tags[{position}]"
    kind = tags[position][2:]
    assert f"does not continue a {kind} entity ({previous})" in info.value.message
    assert f"'B-{kind}'" in info.value.message


def test_i_tag_continuing_its_type_is_accepted(ner: TokenClassification) -> None:
    tags = ["B-PER", "I-PER", "I-PER", "B-PER", "O", "B-LOC", "I-LOC"]
    assert ner.validate_row({"tokens": ["w"] * len(tags), "tags": tags}, 1)["tags"] == tags


# --- text + entities rows -------------------------------------------------------------


def test_text_row_becomes_tagged_words(ner: TokenClassification) -> None:
    text = "Angela Merkel visited New York."
    row = {"text": text, "entities": [{"start": 22, "end": 30, "label": "LOC"},
                                      {"start": 0, "end": 13, "label": "PER"}]}
    assert ner.validate_row(row, 1) == {
        "tokens": ["Angela", "Merkel", "visited", "New", "York", "."],
        "tags": ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O"]}


def test_span_edges_inside_a_word_become_word_edges() -> None:
    # "Parisian" tagged "Paris": the word is split so the span survives exactly.
    tokens, tags = tagged_words("Parisians love Zoë😀👍🏽.", [(0, 5, "LOC"), (15, 18, "PER")])
    assert tokens == ["Paris", "ians", "love", "Zoë", "😀", "👍🏽", "."]
    assert tags == ["B-LOC", "O", "O", "B-PER", "O", "O", "O"]


def test_adjacent_entities_of_one_type_stay_apart() -> None:
    _, tags = tagged_words("Paris London", [(0, 5, "LOC"), (6, 12, "LOC")])
    assert tags == ["B-LOC", "B-LOC"]


@pytest.mark.parametrize("text,entities,field,fragment", [
    ("Paris", None, "entities", "is missing"),
    ("Paris", "LOC", "entities", "must be a list"),
    ("", [], "text", "is empty"),
    ("Paris", [3], "entities[0]", "must be an object, not int"),
    ("Paris", [{"end": 5, "label": "LOC"}], "entities[0].start", "is missing"),
    ("Paris", [{"start": "0", "end": 5, "label": "LOC"}], "entities[0].start",
     "must be an integer, not str"),
    ("Paris", [{"start": True, "end": 5, "label": "LOC"}], "entities[0].start",
     "must be an integer, not bool"),
    ("Paris", [{"start": 0, "end": 5.0, "label": "LOC"}], "entities[0].end",
     "must be an integer, not float"),
    ("Paris", [{"start": 0, "end": 6, "label": "LOC"}], "entities[0]",
     "[0, 6) is not a non-empty range inside the 5-character text"),
    ("Paris", [{"start": -1, "end": 2, "label": "LOC"}], "entities[0]", "is not a non-empty"),
    ("Paris", [{"start": 3, "end": 3, "label": "LOC"}], "entities[0]", "is not a non-empty"),
    ("Paris", [{"start": 0, "end": 5}], "entities[0].label", "is not an entity type"),
    ("Paris", [{"start": 0, "end": 5, "label": "O"}], "entities[0].label", "not 'O'"),
    ("Paris", [{"start": 0, "end": 5, "label": "B-LOC"}], "entities[0].label", "B-/I- prefix"),
    ("Paris", [{"start": 0, "end": 5, "label": "LOC"}, {"start": 4, "end": 5, "label": "X"}],
     "entities[1]", "overlaps entities[0]"),
    ("a Paris", [{"start": 2, "end": 7, "label": "LOC"}, {"start": 0, "end": 3, "label": "X"}],
     "entities[0]", "overlaps entities[1]"),
    ("Zoe\u0301 is", [{"start": 0, "end": 3, "label": "PER"}], "entities[0].end",
     "3 splits a character (U+0301"),
    ("hi 👍🏽", [{"start": 3, "end": 4, "label": "X"}], "entities[0].end", "4 splits a character"),
    ("a 👨\u200d👩 b", [{"start": 3, "end": 6, "label": "X"}], "entities[0].start",
     "3 splits a character"),
    ("a   b", [{"start": 1, "end": 3, "label": "X"}], "entities[0]", "covers only whitespace"),
    ("a\udc00", [], "text", "unpaired UTF-16 surrogate"),
])
def test_text_row_errors_name_line_and_field(ner: TokenClassification, text: str,
                                             entities: object, field: str,
                                             fragment: str) -> None:
    row = {"text": text} if entities is None else {"text": text, "entities": entities}
    with pytest.raises(DatasetInvalid) as info:
        ner.validate_row(row, 8)
    assert (info.value.line, info.value.field) == (8, field)
    assert info.value.message.startswith(f"line 8, field '{field}': ")
    assert fragment in info.value.message


def test_dataset_needs_an_entity(ner: TokenClassification) -> None:
    with pytest.raises(DatasetInvalid) as info:
        ner.validate_dataset([{"tokens": ["a"], "tags": ["O"]}] * 3, [1, 2, 3])
    assert info.value.field == "tags" and "no row has an entity" in info.value.message
    ner.validate_dataset([{"tokens": ["a"], "tags": ["B-X"]}], [1])


def test_label_counts_are_entities_per_type_and_labels_are_stable(
        ner: TokenClassification) -> None:
    rows = [{"tokens": list("abcde"), "tags": ["B-PER", "I-PER", "B-PER", "O", "B-LOC"]},
            {"tokens": list("ab"), "tags": ["B-MISC", "I-MISC"]}]
    assert ner.label_counts(rows) == {"LOC": 1, "MISC": 1, "PER": 2}
    assert ner.labels(rows) == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-PER", "I-PER"]
    assert ner.labels(list(reversed(rows))) == ner.labels(rows)


# --- alignment and windows ------------------------------------------------------------


def _label_names(labels: list[int]) -> list[str | None]:
    return [None if label == IGNORED else LABELS[label] for label in labels]


def test_first_sub_token_carries_the_tag(ner: TokenClassification,
                                         ner_tokenizer: PreTrainedTokenizerBase) -> None:
    row = {"tokens": ["Angela", "Merkel", "visited", "Paris", "."],
           "tags": ["B-PER", "I-PER", "O", "B-LOC", "O"]}
    [features] = ner.encode([row], ner_tokenizer, {t: i for i, t in enumerate(LABELS)}, 64)
    pieces = ner_tokenizer.convert_ids_to_tokens(features["input_ids"])
    assert pieces == ["[CLS]", "angela", "mer", "##kel", "visited", "paris", ".", "[SEP]"]
    assert _label_names(features["labels"]) == [None, "B-PER", "I-PER", None, "O", "B-LOC",
                                                "O", None]
    assert len(features["attention_mask"]) == len(features["input_ids"])


def test_given_words_are_split_as_prediction_splits_text() -> None:
    words, tags = predict_time_words(["U.S.", "troops", "in", "Kabul's"],
                                     ["B-LOC", "O", "O", "B-LOC"])
    assert words == ["U", ".", "S", ".", "troops", "in", "Kabul", "'", "s"]
    assert tags == ["B-LOC", "I-LOC", "I-LOC", "I-LOC", "O", "O", "B-LOC", "I-LOC", "I-LOC"]


def test_every_piece_of_a_given_word_is_a_labelled_word(
        ner: TokenClassification, ner_tokenizer: PreTrainedTokenizerBase) -> None:
    row = {"tokens": ["paris.", "city"], "tags": ["B-LOC", "O"]}
    [features] = ner.encode([row], ner_tokenizer, {t: i for i, t in enumerate(LABELS)}, 64)
    assert ner_tokenizer.convert_ids_to_tokens(features["input_ids"]) == [
        "[CLS]", "paris", ".", "city", "[SEP]"]
    # "." was never labelled when "paris." was one word, yet prediction reads it as one.
    assert _label_names(features["labels"]) == [None, "B-LOC", "I-LOC", "O", None]


def test_word_the_tokenizer_drops_hands_on_its_b_tag(
        ner: TokenClassification, ner_tokenizer: PreTrainedTokenizerBase) -> None:
    # The tokenizer removes a lone zero-width space, so "paris" must become the entity's start.
    row = {"tokens": ["\u200b", "paris", "city"], "tags": ["B-LOC", "I-LOC", "O"]}
    [features] = ner.encode([row], ner_tokenizer, {t: i for i, t in enumerate(LABELS)}, 64)
    assert _label_names(features["labels"]) == [None, "B-LOC", "O", None]


def test_unknown_label_in_evaluation_rows_is_not_scored(
        ner: TokenClassification, ner_tokenizer: PreTrainedTokenizerBase) -> None:
    row = {"tokens": ["paris", "new"], "tags": ["B-LOC", "B-ORG"]}
    [features] = ner.encode([row], ner_tokenizer, {t: i for i, t in enumerate(LABELS)}, 64)
    assert _label_names(features["labels"]) == [None, "B-LOC", None, None]


@pytest.mark.parametrize("n_tokens,body,stride", [(5, 10, 4), (10, 4, 2), (300, 126, 32),
                                                  (127, 126, 32), (50, 6, 100), (17, 8, 0)])
def test_windows_cover_every_token_once(n_tokens: int, body: int, stride: int) -> None:
    spans = windows(n_tokens, body, stride)
    owned = [p for w in spans for p in range(w.own_start, w.own_end)]
    assert owned == list(range(n_tokens))
    for w in spans:
        assert 0 <= w.start <= w.own_start <= w.own_end <= w.end <= n_tokens
        assert w.end - w.start == min(body, n_tokens)


def test_long_sentence_is_windowed_and_every_word_labelled_once(
        ner: TokenClassification, ner_tokenizer: PreTrainedTokenizerBase) -> None:
    words = ["angela", "merkel", "visited", "paris", "in", "the", "city", "of", "new",
             "york"] * 4
    tags = ["B-PER", "I-PER", "O", "B-LOC", "O", "O", "O", "O", "B-LOC", "I-LOC"] * 4
    features = ner.encode([{"tokens": words, "tags": tags}], ner_tokenizer,
                          {t: i for i, t in enumerate(LABELS)}, 16)
    assert len(features) > 1
    assert all(len(f["input_ids"]) <= 16 for f in features)
    labelled = [label for f in features for label in _label_names(f["labels"]) if label]
    assert labelled == tags


# --- metrics --------------------------------------------------------------------------


def test_compute_metrics_scores_entities_not_tokens(ner: TokenClassification) -> None:
    gold = np.array([[IGNORED, 3, 4, 0, 1, IGNORED], [IGNORED, 1, 2, IGNORED, IGNORED,
                                                      IGNORED]])
    predicted = np.array([[0, 3, 4, 0, 0, 0], [0, 1, 0, 0, 0, 0]])  # PER right, both LOC wrong
    logits = np.eye(len(LABELS))[predicted]
    metrics = ner.compute_metrics(logits, gold, LABELS)
    assert metrics["entity_precision"] == pytest.approx(1 / 2)
    assert metrics["entity_recall"] == pytest.approx(1 / 3)
    assert metrics["entity_f1"] == pytest.approx(0.4)
    assert metrics["token_accuracy"] == pytest.approx(4 / 6)
    assert metrics["PER_f1"] == pytest.approx(1.0)
    assert metrics["LOC_recall"] == 0.0 and metrics["LOC_precision"] == 0.0
    assert ner.best_metric == "entity_f1"


def test_an_entity_across_a_window_edge_is_scored_once(
        ner: TokenClassification, ner_tokenizer: PreTrainedTokenizerBase) -> None:
    label2id = {t: i for i, t in enumerate(LABELS)}
    words = ["the"] * 40  # one sub-token each
    plain = ner.encode([{"tokens": words, "tags": ["O"] * 40}], ner_tokenizer, label2id, 16)
    edge = sum(label != IGNORED for label in plain[0]["labels"])  # first word of window 2
    tags = ["O"] * 40
    tags[edge - 1:edge + 1] = ["B-LOC", "I-LOC"]
    features = ner.encode([{"tokens": words, "tags": tags}], ner_tokenizer, label2id, 16)
    gold = np.full((len(features), 16), IGNORED)
    for row, feature in zip(gold, features, strict=True):
        row[:len(feature["labels"])] = feature["labels"]
    # The model finds the entity's first word only: the one gold entity is missed.
    predicted = np.where(gold == label2id["I-LOC"], label2id["O"], np.maximum(gold, 0))
    logits = np.eye(len(LABELS))[predicted]

    joined = ner.compute_metrics(logits, gold, LABELS, rows=[f["row"] for f in features])
    assert joined["entity_recall"] == 0.0 and joined["entity_precision"] == 0.0
    # Scored window by window, the half in the first window would pass as a whole entity.
    by_window = ner.compute_metrics(logits, gold, LABELS)
    assert by_window["entity_precision"] == 1.0 and by_window["entity_recall"] == 0.5


def test_metrics_without_any_entity_are_zero_not_an_error() -> None:
    assert entity_metrics([["O", "O"]], [["O", "O"]])["entity_f1"] == 0.0


# --- aggregation ----------------------------------------------------------------------


def _scores(label: str, p: float = 0.9) -> np.ndarray:
    probs = np.full(len(LABELS), (1 - p) / (len(LABELS) - 1))
    probs[LABELS.index(label)] = p
    return probs


TEXT = "Angela Merkel visited Paris"
# Sub-tokens: angela | mer ##kel | visited | paris
TOKENS = [TokenScores(1, 0, 6, 0, _scores("B-PER")),
          TokenScores(2, 7, 10, 1, _scores("I-PER", 0.8)),
          TokenScores(3, 10, 13, 1, _scores("B-LOC", 0.95)),
          TokenScores(4, 14, 21, 2, _scores("O")),
          TokenScores(5, 22, 27, 3, _scores("I-LOC", 0.7))]


def _spans(entities: list[dict]) -> list[tuple]:
    return [(e.get("entity_group", e.get("entity")), e["word"]) for e in entities]


def test_aggregation_none_answers_per_token() -> None:
    entities = aggregate(TEXT, TOKENS, ID2LABEL, "none", ["O"])
    assert _spans(entities) == [("B-PER", "Angela"), ("I-PER", "Mer"), ("B-LOC", "kel"),
                                ("I-LOC", "Paris")]
    assert [e["index"] for e in entities] == [1, 2, 3, 5]
    assert entities[1]["score"] == pytest.approx(0.8)


def test_aggregation_simple_groups_words_and_stray_i_starts_an_entity() -> None:
    # "kel" scores B-LOC, but it is the second piece of "Merkel": a word is never split.
    entities = aggregate(TEXT, TOKENS, ID2LABEL, "simple", ["O"])
    assert _spans(entities) == [("PER", "Angela Merkel"), ("LOC", "Paris")]
    assert entities[0]["score"] == pytest.approx(0.85)
    assert (entities[0]["start"], entities[0]["end"]) == (0, 13)


@pytest.mark.parametrize("strategy,expected", [
    ("first", [("PER", "Angela Merkel"), ("LOC", "Paris")]),
    ("max", [("PER", "Angela"), ("LOC", "Merkel"), ("LOC", "Paris")]),
    ("average", [("PER", "Angela"), ("LOC", "Merkel"), ("LOC", "Paris")]),
])
def test_word_aggregations_never_split_a_word(strategy: str, expected: list) -> None:
    entities = aggregate(TEXT, TOKENS, ID2LABEL, strategy, ["O"])
    assert _spans(entities) == expected


def test_average_aggregation_averages_scores() -> None:
    # One word of three pieces: the first and the most confident say LOC, the average says PER.
    pieces = [TokenScores(2, 7, 9, 1, _scores("B-LOC", 0.6)),
              TokenScores(3, 9, 11, 1, _scores("I-PER", 0.5)),
              TokenScores(4, 11, 13, 1, _scores("I-PER", 0.5))]
    tokens = [TOKENS[0], *pieces]
    assert _spans(aggregate(TEXT, tokens, ID2LABEL, "first", ["O"]))[-1] == ("LOC", "Merkel")
    assert _spans(aggregate(TEXT, tokens, ID2LABEL, "max", ["O"]))[-1] == ("LOC", "Merkel")
    [entity] = aggregate(TEXT, tokens, ID2LABEL, "average", ["O"])
    assert (entity["entity_group"], entity["word"]) == ("PER", "Angela Merkel")
    merkel = np.mean([p.probs for p in pieces], axis=0)
    assert entity["score"] == pytest.approx((0.9 + merkel.max()) / 2)


def test_ignore_labels_empty_keeps_outside_groups() -> None:
    entities = aggregate(TEXT, TOKENS, ID2LABEL, "first", [])
    assert ("O", "visited") in _spans(entities)
    assert _spans(aggregate(TEXT, TOKENS, ID2LABEL, "first", ["O", "PER"])) == [
        ("LOC", "Paris")]


# --- predict with the tiny model -------------------------------------------------------


def _tiny(ner_model_dir: Path) -> tuple[TokenClassification, PreTrainedModel]:
    task = TokenClassification()
    model = task.load_model(ner_model_dir)
    model.eval()
    return task, model


def test_predict_answers_one_list_per_input_with_offsets_into_the_input(
        ner_model_dir: Path, ner_tokenizer: PreTrainedTokenizerBase) -> None:
    task, model = _tiny(ner_model_dir)
    texts = ["  Angela  MERKEL, visited Paris!", "Zoë 😀 lives in New York.", "paris"]
    for strategy in ("none", "simple", "first", "average", "max"):
        outputs = task.predict(model, ner_tokenizer, texts,
                               {"aggregation_strategy": strategy, "ignore_labels": []}, 64)
        assert len(outputs) == len(texts)
        for text, entities in zip(texts, outputs, strict=True):
            assert entities, (strategy, text)  # ignore_labels=[]: every token is answered
            for entity in entities:
                assert text[entity["start"]:entity["end"]] == entity["word"]
                assert entity["word"] == entity["word"].strip() and entity["word"]
                assert 0 < entity["score"] <= 1


def test_predict_windows_a_long_input_like_a_short_one(
        ner_model_dir: Path, ner_tokenizer: PreTrainedTokenizerBase) -> None:
    task, model = _tiny(ner_model_dir)
    text = " ".join(["angela merkel visited paris"] * 10)  # 50 tokens
    short = task.predict(model, ner_tokenizer, [text], {"aggregation_strategy": "none",
                                                        "ignore_labels": []}, 64)[0]
    windowed = task.predict(model, ner_tokenizer, [text], {"aggregation_strategy": "none",
                                                           "ignore_labels": []}, 24)[0]
    assert [e["start"] for e in windowed] == [e["start"] for e in short]
    assert len(windowed) == len(ner_tokenizer.tokenize(text))


def test_single_string_answer_is_one_flat_list(ner: TokenClassification) -> None:
    outputs = [[{"entity_group": "PER"}], [{"entity_group": "LOC"}]]
    assert ner.response(outputs[:1], batched=False) == outputs[0]
    assert ner.response(outputs, batched=True) == outputs


def test_predict_parameters_accept_the_hf_token_classification_ones() -> None:
    parameters = PredictParameters(aggregation_strategy="max", ignore_labels=["O"], stride=16)
    assert parameters.model_dump(exclude_none=True) == {
        "aggregation_strategy": "max", "ignore_labels": ["O"], "stride": 16}
    with pytest.raises(ValueError):
        PredictParameters(aggregation_strategy="longest")  # type: ignore[arg-type]


# --- training -------------------------------------------------------------------------


def test_fine_tune_evaluates_long_sentences_as_whole_sentences(
        ner: TokenClassification, ner_model_dir: Path, tmp_path: Path) -> None:
    words = ["angela", "merkel", "visited", "paris", "in", "the", "city", "of", "new", "york"]
    tags = ["B-PER", "I-PER", "O", "B-LOC", "O", "O", "O", "O", "B-LOC", "I-LOC"]
    rows = [{"tokens": words * 3, "tags": tags * 3}] * 8  # 33+ sub-tokens: 3 windows at 16
    hyperparameters = resolve({"n_epochs": 1, "batch_size": 4, "max_length": 16}, len(rows))
    plan = TrainingPlan(task=ner, base_model=str(ner_model_dir), train_rows=rows,
                        eval_rows=rows[:3], labels=LABELS, hyperparameters=hyperparameters,
                        seed=0, output_dir=tmp_path / "job")
    observer = RecordingObserver()
    result = fine_tune(plan, observer)

    assert result.stopped is None and result.best_checkpoint is not None
    assert observer.evaluations
    _, metrics = observer.evaluations[-1]
    # 3 sentences x 6 entities; per-type figures come from whole sentences, windows joined.
    assert {"entity_f1", "PER_f1", "LOC_f1", "token_accuracy"} <= set(metrics)
