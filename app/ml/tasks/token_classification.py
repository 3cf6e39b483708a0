"""Token classification (NER): tagged tokens or text with character spans in, entities out.

Decisions where the contract is silent:

- Tags are IOB2 (`O`, `B-X`, `I-X`). An `I-X` that does not continue an X entity (first tag,
  after `O`, or after another type) is **rejected** at upload, naming the line, the tag's
  position and the fix (`B-X`). It is not repaired: a file in IOB1 or with broken spans would
  otherwise train silently on entity boundaries nobody wrote. Model *outputs* are read the
  conlleval / Hugging Face way instead: a stray `I-X` starts a new X entity.
- `{"text", "entities"}` rows become tokens at upload: words are runs of letters and digits or
  single other characters (combining marks, joiners and emoji modifiers stay with the
  character before), and every entity boundary is also a word boundary, so no span is lost.
  Offsets count code points of the decoded text. An offset inside a character (before a
  combining mark, joiner, variation selector or emoji modifier) is rejected.
- The first sub-token of each word carries the word's tag; the rest get -100 (no loss, not
  scored). A word the tokenizer drops entirely (e.g. a lone zero-width space) passes its `B-`
  to the next word of its entity.
- Sentences longer than `max_length` are cut into overlapping windows (`WINDOW_STRIDE` tokens
  of overlap) rather than truncated: every word is labelled in exactly one window, the one
  where it sits furthest from an edge. Evaluation scores each window as a sequence, so an
  entity straddling a window edge could count as two; with `max_length` 128 that concerns a
  handful of CoNLL-2003 sentences. Prediction windows the same way, so long inputs lose nothing.
- Metrics: seqeval entity-level precision / recall / F1 (conlleval rules), overall and per type,
  plus token accuracy. The checkpoint with the best `entity_f1` becomes the version.
- Predict follows the Hugging Face token-classification format. `aggregation_strategy`
  defaults to `simple`, as the hosted Inference API does for NER; `none` answers per token with
  `entity` and `index` instead of `entity_group`. `word` is always `text[start:end]`, the
  caller's own characters, rather than the tokenizer's decoding (which, for an uncased model,
  is lower-cased and accent-stripped).
"""

import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from seqeval.metrics import classification_report
from transformers import (
    AutoModelForTokenClassification,
    DataCollatorForTokenClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from app.errors import DatasetInvalid
from app.ml.tasks.base import Features, Row, TaskAdapter

PREDICT_BATCH = 32
WINDOW_STRIDE = 32
IGNORED = -100
AGGREGATIONS = ("none", "simple", "first", "average", "max")
DEFAULT_AGGREGATION = "simple"
# Characters that belong to the character before them: a span edge here splits a character.
_JOINERS = {"\u200d", "\u20e3"}
_EMOJI_MODIFIERS = range(0x1F3FB, 0x1F400)


# ---------------------------------------------------------------- tags


def split_tag(tag: str) -> tuple[str, str]:
    """('B' | 'I', type); `O` reads as ('I', 'O') so runs of O group like the HF pipeline."""
    if tag.startswith(("B-", "I-")):
        return tag[0], tag[2:]
    return "I", tag


def _valid_tag(tag: Any) -> bool:
    return isinstance(tag, str) and (tag == "O" or (
        tag[:2] in ("B-", "I-") and len(tag) > 2 and not any(c.isspace() for c in tag)))


def bio_error(tags: Sequence[str]) -> tuple[int, str] | None:
    """The first position whose I-X does not continue an X entity, with what to do about it."""
    previous = "O"
    for position, tag in enumerate(tags):
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            where = "the first tag" if position == 0 else f"after '{previous}'"
            return position, (f"'{tag}' does not continue a {tag[2:]} entity ({where}); "
                              f"start the entity with 'B-{tag[2:]}' (tags must be IOB2)")
        previous = tag
    return None


def entity_types(tags: Iterable[str]) -> Counter[str]:
    return Counter(tag[2:] for tag in tags if tag.startswith("B-"))


# ---------------------------------------------------------------- characters and words


def joins_previous(text: str, index: int) -> bool:
    """Whether text[index] is part of the character before it (so `index` splits it)."""
    if index <= 0 or index >= len(text):
        return False
    char = text[index]
    return (unicodedata.category(char).startswith("M") or char in _JOINERS
            or text[index - 1] == "\u200d" or ord(char) in _EMOJI_MODIFIERS)


def _has_unpaired_surrogate(text: str) -> bool:
    return any("\ud800" <= char <= "\udfff" for char in text)


def word_spans(text: str, cuts: set[int]) -> list[tuple[int, int]]:
    """Words of `text` as (start, end): letter/digit runs or single other characters, also
    split at every offset in `cuts`."""
    spans: list[tuple[int, int]] = []
    start: int | None = None
    in_word = False
    for i, char in enumerate(text):
        if char.isspace():
            if start is not None:
                spans.append((start, i))
            start = None
            continue
        if start is not None and joins_previous(text, i) and i not in cuts:
            continue
        wordy = char.isalnum() or char == "_"
        if start is None or i in cuts or not (wordy and in_word):
            if start is not None:
                spans.append((start, i))
            start = i
        in_word = wordy
    if start is not None:
        spans.append((start, len(text)))
    return spans


# ---------------------------------------------------------------- row validation


def _list_field(row: Row, field: str, line: int) -> list[Any]:
    value = row.get(field)
    if value is None:
        raise DatasetInvalid("is missing", line=line, field=field)
    if not isinstance(value, list):
        raise DatasetInvalid(f"must be a list, not {type(value).__name__}", line=line,
                             field=field)
    if not value:
        raise DatasetInvalid("is empty", line=line, field=field)
    return value


def _checked_tokens(row: Row, line: int) -> list[str]:
    tokens = _list_field(row, "tokens", line)
    for i, token in enumerate(tokens):
        field = f"tokens[{i}]"
        if not isinstance(token, str):
            raise DatasetInvalid(f"must be a string, not {type(token).__name__}", line=line,
                                 field=field)
        if not token.strip():
            raise DatasetInvalid("is an empty token", line=line, field=field)
        if _has_unpaired_surrogate(token):
            raise DatasetInvalid("holds an unpaired UTF-16 surrogate", line=line, field=field)
    return tokens


def _checked_tags(row: Row, line: int, n_tokens: int) -> list[str]:
    tags = _list_field(row, "tags", line)
    if len(tags) != n_tokens:
        raise DatasetInvalid(f"has {len(tags)} tags for {n_tokens} tokens", line=line,
                             field="tags")
    for i, tag in enumerate(tags):
        if not _valid_tag(tag):
            raise DatasetInvalid(f"{tag!r} is not a tag; use 'O', 'B-<type>' or 'I-<type>'",
                                 line=line, field=f"tags[{i}]")
    error = bio_error(tags)
    if error is not None:
        raise DatasetInvalid(error[1], line=line, field=f"tags[{error[0]}]")
    return tags


def _offset(span: dict[str, Any], key: str, line: int, field: str) -> int:
    value = span.get(key)
    if value is None:
        raise DatasetInvalid("is missing", line=line, field=f"{field}.{key}")
    if not isinstance(value, int) or isinstance(value, bool):
        raise DatasetInvalid(f"must be an integer, not {type(value).__name__}", line=line,
                             field=f"{field}.{key}")
    return value


def _checked_span(span: Any, text: str, line: int, field: str) -> tuple[int, int, str]:
    if not isinstance(span, dict):
        raise DatasetInvalid(f"must be an object, not {type(span).__name__}", line=line,
                             field=field)
    start, end = _offset(span, "start", line, field), _offset(span, "end", line, field)
    label = span.get("label")
    if not isinstance(label, str) or not label.strip() or label == "O" or \
            any(c.isspace() for c in label) or label.startswith(("B-", "I-")):
        raise DatasetInvalid(f"{label!r} is not an entity type (a non-empty word, not 'O' and "
                             "without a B-/I- prefix)", line=line, field=f"{field}.label")
    if not 0 <= start < end <= len(text):
        raise DatasetInvalid(f"[{start}, {end}) is not a non-empty range inside the "
                             f"{len(text)}-character text", line=line, field=field)
    for key, offset in (("start", start), ("end", end)):
        if joins_previous(text, offset):
            raise DatasetInvalid(f"{offset} splits a character (U+{ord(text[offset]):04X} "
                                 "belongs to the one before it)", line=line,
                                 field=f"{field}.{key}")
    if not text[start:end].strip():
        raise DatasetInvalid("covers only whitespace", line=line, field=field)
    return start, end, label


def _checked_spans(row: Row, text: str, line: int) -> list[tuple[int, int, str]]:
    raw = row.get("entities")
    if not isinstance(raw, list):
        raise DatasetInvalid("must be a list" if raw is not None else "is missing", line=line,
                             field="entities")
    spans = [(*_checked_span(span, text, line, f"entities[{i}]"), i) for i, span in
             enumerate(raw)]
    spans.sort()
    for (_, end, _, first), (start, _, _, second) in zip(spans, spans[1:], strict=False):
        if start < end:
            raise DatasetInvalid(f"overlaps entities[{first}]", line=line,
                                 field=f"entities[{second}]")
    return [(start, end, label) for start, end, label, _ in spans]


def tagged_words(text: str, spans: Sequence[tuple[int, int, str]]) -> tuple[list[str], list[str]]:
    """Words of `text` and their IOB2 tags from non-overlapping, sorted character spans."""
    cuts = {offset for start, end, _ in spans for offset in (start, end)}
    tokens: list[str] = []
    tags: list[str] = []
    for word_start, word_end in word_spans(text, cuts):
        tag = "O"
        for start, end, label in spans:
            if start <= word_start < end:
                tag = ("B-" if word_start == start or not text[start:word_start].strip()
                       else "I-") + label
                break
        tokens.append(text[word_start:word_end])
        tags.append(tag)
    return tokens, tags


def _text_row(row: Row, line: int) -> Row:
    text = row.get("text")
    if not isinstance(text, str):
        raise DatasetInvalid("is missing" if text is None else
                             f"must be a string, not {type(text).__name__}", line=line,
                             field="text")
    if not text.strip():
        raise DatasetInvalid("is empty", line=line, field="text")
    if _has_unpaired_surrogate(text):
        raise DatasetInvalid("holds an unpaired UTF-16 surrogate", line=line, field="text")
    tokens, tags = tagged_words(text, _checked_spans(row, text, line))
    return {"tokens": tokens, "tags": tags}


# ---------------------------------------------------------------- windows over long sequences


@dataclass(frozen=True)
class Window:
    start: int  # first token of the window
    end: int
    own_start: int  # tokens this window answers for (each token is owned by exactly one)
    own_end: int


def windows(n_tokens: int, body: int, stride: int) -> list[Window]:
    """Cover n_tokens with windows of `body` tokens overlapping by at least `stride`."""
    if n_tokens <= body:
        return [Window(0, n_tokens, 0, n_tokens)]
    stride = max(0, min(stride, body // 2))
    starts = list(range(0, n_tokens - body, body - stride)) + [n_tokens - body]
    # Between two windows, the overlap is split at its middle: each token keeps the most context.
    edges = [0] + [(nxt + prev + body) // 2 for prev, nxt in zip(starts, starts[1:],
                                                                  strict=False)] + [n_tokens]
    return [Window(s, s + body, edges[i], edges[i + 1]) for i, s in enumerate(starts)]


def _window_features(tokenizer: PreTrainedTokenizerBase, ids: list[int],
                     window: Window) -> Features:
    input_ids = [tokenizer.cls_token_id, *ids[window.start:window.end], tokenizer.sep_token_id]
    features: Features = {"input_ids": input_ids, "attention_mask": [1] * len(input_ids)}
    if "token_type_ids" in tokenizer.model_input_names:
        features["token_type_ids"] = [0] * len(input_ids)
    return features


def word_labels(tags: Sequence[str], word_ids: Sequence[int | None],
                label2id: dict[str, int]) -> list[int]:
    """One label per sub-token: the word's tag on its first sub-token, IGNORED elsewhere."""
    present = {w for w in word_ids if w is not None}
    tags = list(tags)
    for word, tag in enumerate(tags):
        # A word with no sub-tokens hands its B- to the next word of the same entity.
        if word not in present and tag.startswith("B-") and word + 1 < len(tags) \
                and tags[word + 1] == "I-" + tag[2:]:
            tags[word + 1] = tag
    labels = []
    previous: int | None = None
    for word_id in word_ids:
        first = word_id is not None and word_id != previous
        labels.append(label2id.get(tags[word_id], IGNORED) if first and word_id is not None
                      else IGNORED)
        previous = word_id
    return labels


# ---------------------------------------------------------------- aggregation


@dataclass
class TokenScores:
    index: int  # the token's position in the model input (1 = first after [CLS])
    start: int
    end: int
    word: int | None
    probs: np.ndarray


@dataclass
class _Tagged:
    tag: str
    score: float
    start: int
    end: int


def _token_tags(tokens: Sequence[TokenScores], id2label: dict[int, str]) -> list[_Tagged]:
    return [_Tagged(id2label[int(t.probs.argmax())], float(t.probs.max()), t.start, t.end)
            for t in tokens]


def _word_tags(tokens: Sequence[TokenScores], id2label: dict[int, str],
               strategy: str) -> list[_Tagged]:
    """One tag per word, from its sub-tokens: the first's, the averaged scores', or the most
    confident sub-token's."""
    words: list[list[TokenScores]] = []
    for token in tokens:
        if words and token.word is not None and words[-1][-1].word == token.word:
            words[-1].append(token)
        else:
            words.append([token])
    tagged = []
    for pieces in words:
        if strategy == "first":
            probs = pieces[0].probs
        elif strategy == "average":
            probs = np.mean([p.probs for p in pieces], axis=0)
        else:
            probs = max(pieces, key=lambda p: float(p.probs.max())).probs
        tagged.append(_Tagged(id2label[int(probs.argmax())], float(probs.max()),
                              pieces[0].start, pieces[-1].end))
    return tagged


def _groups(tagged: Sequence[_Tagged]) -> list[list[_Tagged]]:
    """Runs of one type; a B- always starts a new run, an I- after another type too."""
    groups: list[list[_Tagged]] = []
    for item in tagged:
        bi, kind = split_tag(item.tag)
        if groups and bi != "B" and split_tag(groups[-1][-1].tag)[1] == kind:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def aggregate(text: str, tokens: Sequence[TokenScores], id2label: dict[int, str],
              strategy: str, ignore_labels: Sequence[str]) -> list[dict[str, Any]]:
    """Entities of one input in the Hugging Face token-classification format."""
    if strategy == "none":
        return [{"entity": t.tag, "score": t.score, "index": token.index,
                 "word": text[t.start:t.end], "start": t.start, "end": t.end}
                for token, t in zip(tokens, _token_tags(tokens, id2label), strict=True)
                if t.tag not in ignore_labels]
    tagged = (_token_tags(tokens, id2label) if strategy == "simple"
              else _word_tags(tokens, id2label, strategy))
    entities = []
    for group in _groups(tagged):
        kind = split_tag(group[0].tag)[1]
        if kind in ignore_labels:
            continue
        start, end = group[0].start, group[-1].end
        entities.append({"entity_group": kind,
                         "score": float(np.mean([item.score for item in group])),
                         "word": text[start:end], "start": start, "end": end})
    return entities


def _without_overlaps(entities: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """Two tokens can share characters (one character read as two pieces); keep spans apart."""
    kept: list[dict[str, Any]] = []
    for entity in entities:
        if kept and entity["start"] < kept[-1]["end"]:
            entity["start"] = kept[-1]["end"]
            entity["word"] = text[entity["start"]:entity["end"]]
        if entity["start"] < entity["end"]:
            kept.append(entity)
    return kept


# ---------------------------------------------------------------- the adapter


class TokenClassification(TaskAdapter):
    name = "token-classification"
    best_metric = "entity_f1"

    def matches(self, row: Row) -> bool:
        return ("tokens" in row and "tags" in row) or ("text" in row and "entities" in row)

    def validate_row(self, row: Row, line: int) -> Row:
        if "tokens" in row or "tags" in row:
            tokens = _checked_tokens(row, line)
            return {"tokens": tokens, "tags": _checked_tags(row, line, len(tokens))}
        return _text_row(row, line)

    def validate_dataset(self, rows: Sequence[Row], lines: Sequence[int]) -> None:
        if not any(tag != "O" for row in rows for tag in row["tags"]):
            raise DatasetInvalid("no row has an entity; a tagger needs at least one",
                                 field="tags")

    def label_counts(self, rows: Sequence[Row]) -> dict[str, int]:
        """Entities per type."""
        counts: Counter[str] = Counter()
        for row in rows:
            counts.update(entity_types(row["tags"]))
        return dict(sorted(counts.items()))

    def labels(self, rows: Sequence[Row]) -> list[str]:
        kinds = sorted({split_tag(tag)[1] for row in rows for tag in row["tags"]} - {"O"})
        return ["O"] + [f"{bi}-{kind}" for kind in kinds for bi in ("B", "I")]

    def encode(self, rows: Sequence[Row], tokenizer: PreTrainedTokenizerBase,
               label2id: dict[str, int], max_length: int) -> list[Features]:
        if not rows:
            return []
        # verbose=False: sentences longer than the model are expected; they are windowed below.
        encoded = tokenizer([row["tokens"] for row in rows], is_split_into_words=True,
                            add_special_tokens=False, verbose=False)
        body = max_length - 2  # room for [CLS] and [SEP]
        features = []
        for i, row in enumerate(rows):
            ids = encoded["input_ids"][i]
            labels = word_labels(row["tags"], encoded.word_ids(i), label2id)
            for window in windows(len(ids), body, WINDOW_STRIDE):
                item = _window_features(tokenizer, ids, window)
                owned = [label if window.own_start <= p < window.own_end else IGNORED
                         for p, label in enumerate(labels[window.start:window.end],
                                                   start=window.start)]
                item["labels"] = [IGNORED, *owned, IGNORED]
                features.append(item)
        return features

    def collator(self, tokenizer: PreTrainedTokenizerBase) -> Any:
        return DataCollatorForTokenClassification(tokenizer)

    def load_model(self, path: str | Path, labels: list[str] | None = None) -> PreTrainedModel:
        kwargs: dict[str, Any] = {"use_safetensors": True}
        if labels is not None:
            kwargs |= {
                "ignore_mismatched_sizes": True,
                "num_labels": len(labels),
                "id2label": dict(enumerate(labels)),
                "label2id": {label: i for i, label in enumerate(labels)},
            }
        model: PreTrainedModel = AutoModelForTokenClassification.from_pretrained(
            str(path), **kwargs)
        return model

    def compute_metrics(self, logits: Any, label_ids: Any, labels: list[str]) -> dict[str, float]:
        predicted = np.asarray(logits).argmax(axis=-1)
        gold = np.asarray(label_ids)
        gold_tags, predicted_tags = [], []
        for gold_row, predicted_row in zip(gold, predicted, strict=True):
            scored = gold_row != IGNORED
            gold_tags.append([labels[i] for i in gold_row[scored]])
            predicted_tags.append([labels[i] for i in predicted_row[scored]])
        return entity_metrics(gold_tags, predicted_tags)

    @torch.inference_mode()
    def predict(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                inputs: list[str], parameters: dict[str, Any], max_length: int) -> list[Any]:
        id2label: dict[int, str] = {int(k): v for k, v in (model.config.id2label or {}).items()}
        strategy = parameters.get("aggregation_strategy") or DEFAULT_AGGREGATION
        ignore = parameters.get("ignore_labels")
        ignore_labels = ["O"] if ignore is None else list(ignore)
        stride = parameters.get("stride")
        token_scores = _score_tokens(model, tokenizer, inputs, max_length - 2,
                                     WINDOW_STRIDE if stride is None else stride)
        return [_without_overlaps(aggregate(text, tokens, id2label, strategy, ignore_labels),
                                  text)
                for text, tokens in zip(inputs, token_scores, strict=True)]

    def response(self, outputs: list[Any], batched: bool) -> Any:
        # The HF API answers a single string with one flat list of entities.
        return outputs if batched else outputs[0]


def entity_metrics(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    """seqeval (conlleval rules) entity scores, overall and per type, and token accuracy."""
    tokens = sum(len(row) for row in gold)
    correct = sum(g == p for gold_row, predicted_row in zip(gold, predicted, strict=True)
                  for g, p in zip(gold_row, predicted_row, strict=True))
    if not any(tag != "O" for rows in (gold, predicted) for row in rows for tag in row):
        # No entity on either side: seqeval would divide by zero.
        return {"entity_precision": 0.0, "entity_recall": 0.0, "entity_f1": 0.0,
                "token_accuracy": correct / tokens if tokens else 0.0}
    report = classification_report(gold, predicted, output_dict=True, zero_division=0)
    metrics = {
        "entity_precision": float(report["micro avg"]["precision"]),
        "entity_recall": float(report["micro avg"]["recall"]),
        "entity_f1": float(report["micro avg"]["f1-score"]),
        "token_accuracy": correct / tokens if tokens else 0.0,
    }
    for kind, scores in report.items():
        if kind.endswith(" avg"):
            continue
        metrics[f"{kind}_precision"] = float(scores["precision"])
        metrics[f"{kind}_recall"] = float(scores["recall"])
        metrics[f"{kind}_f1"] = float(scores["f1-score"])
    return metrics


def _score_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                  texts: list[str], body: int, stride: int) -> list[list[TokenScores]]:
    """Each input's tokens (specials excluded) with their label probabilities."""
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True,
                        verbose=False)
    jobs = []  # (input, window, features)
    for i in range(len(texts)):
        for window in windows(len(encoded["input_ids"][i]), body, stride):
            jobs.append((i, window, _window_features(tokenizer, encoded["input_ids"][i], window)))
    probs: list[np.ndarray] = [np.zeros((len(ids), 0)) for ids in encoded["input_ids"]]
    # Sorting by length keeps padding, and so wasted compute, small within each batch.
    jobs.sort(key=lambda job: len(job[2]["input_ids"]))
    for start in range(0, len(jobs), PREDICT_BATCH):
        chunk = jobs[start:start + PREDICT_BATCH]
        batch = tokenizer.pad([features for _, _, features in chunk], return_tensors="pt")
        batch = batch.to(model.device)
        scores = torch.softmax(model(**batch).logits.float(), dim=-1).cpu().numpy()
        for (i, window, _), window_scores in zip(chunk, scores, strict=True):
            if probs[i].shape[1] == 0:
                probs[i] = np.zeros((len(encoded["input_ids"][i]), window_scores.shape[-1]))
            own = slice(window.own_start - window.start + 1, window.own_end - window.start + 1)
            probs[i][window.own_start:window.own_end] = window_scores[own]
    return [[TokenScores(p + 1, start, end, encoded.word_ids(i)[p], probs[i][p])
             for p, (start, end) in enumerate(encoded["offset_mapping"][i])]
            for i in range(len(texts))]
