"""Sentences to model features: sub-token labels and windows over long sentences.

- Words are split where prediction splits raw text (`word_spans`: letter/digit runs and single
  other characters), so a word means the same thing in training and at predict time: a given
  token "U.S." becomes the words "U", ".", "S", "." of one entity. Without this, the pieces a
  predict-time word starts with were never labelled in training, and came back as stray
  entities.
- The first sub-token of each word carries the word's tag; the rest get -100 (no loss, not
  scored). A word the tokenizer drops entirely (e.g. a lone zero-width space) passes its `B-`
  to the next word of its entity.
- Sentences longer than `max_length` are cut into overlapping windows (`WINDOW_STRIDE` tokens
  of overlap) rather than truncated: every word is labelled in exactly one window, the one
  where it sits furthest from an edge. Each window names its sentence (SOURCE_ROW), so
  evaluation joins a sentence's windows back together before scoring its entities: an entity
  across a window edge counts once. Prediction windows the same way, so long inputs lose nothing.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from app.ml.tasks.base import SOURCE_ROW, Features, Row
from app.ml.tasks.token_classification.rows import word_spans

WINDOW_STRIDE = 32
IGNORED = -100


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


def window_features(tokenizer: PreTrainedTokenizerBase, ids: list[int],
                    window: Window) -> Features:
    input_ids = [tokenizer.cls_token_id, *ids[window.start:window.end], tokenizer.sep_token_id]
    features: Features = {"input_ids": input_ids, "attention_mask": [1] * len(input_ids)}
    if "token_type_ids" in tokenizer.model_input_names:
        features["token_type_ids"] = [0] * len(input_ids)
    return features


def predict_time_words(tokens: Sequence[str],
                       tags: Sequence[str]) -> tuple[list[str], list[str]]:
    """The given words split as prediction splits text; a split word's later parts continue
    its entity (I-), or stay outside one (O)."""
    words: list[str] = []
    word_tags: list[str] = []
    for token, tag in zip(tokens, tags, strict=True):
        parts = [token[start:end] for start, end in word_spans(token, set())] or [token]
        words += parts
        word_tags += [tag] + ["O" if tag == "O" else "I-" + tag[2:]] * (len(parts) - 1)
    return words, word_tags


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


def encode_sentences(rows: Sequence[Row], tokenizer: PreTrainedTokenizerBase,
                     label2id: dict[str, int], max_length: int) -> list[Features]:
    """Labelled features for every window of every sentence."""
    if not rows:
        return []
    # verbose=False: sentences longer than the model are expected; they are windowed below.
    sentences = [predict_time_words(row["tokens"], row["tags"]) for row in rows]
    encoded = tokenizer([words for words, _ in sentences], is_split_into_words=True,
                        add_special_tokens=False, verbose=False)
    body = max_length - 2  # room for [CLS] and [SEP]
    features = []
    for i, (_, tags) in enumerate(sentences):
        ids = encoded["input_ids"][i]
        labels = word_labels(tags, encoded.word_ids(i), label2id)
        for window in windows(len(ids), body, WINDOW_STRIDE):
            item = window_features(tokenizer, ids, window)
            owned = [label if window.own_start <= p < window.own_end else IGNORED
                     for p, label in enumerate(labels[window.start:window.end],
                                               start=window.start)]
            item["labels"] = [IGNORED, *owned, IGNORED]
            item[SOURCE_ROW] = i
            features.append(item)
    return features
