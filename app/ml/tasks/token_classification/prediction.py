"""Prediction: the model over each input, windowed as in training so long inputs lose nothing,
then its token scores grouped into entities."""

from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from app.ml.tasks.token_classification.encoding import WINDOW_STRIDE, window_features, windows
from app.ml.tasks.token_classification.entities import (
    DEFAULT_AGGREGATION,
    TokenScores,
    aggregate,
    without_overlaps,
)
from app.ml.tasks.token_classification.rows import word_spans

PREDICT_BATCH = 32


def predict_entities(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                     inputs: list[str], parameters: dict[str, Any],
                     max_length: int) -> list[list[dict[str, Any]]]:
    """Each input's entities, as the Hugging Face token-classification parameters ask."""
    id2label: dict[int, str] = {int(k): v for k, v in (model.config.id2label or {}).items()}
    strategy = parameters.get("aggregation_strategy") or DEFAULT_AGGREGATION
    ignore = parameters.get("ignore_labels")
    ignore_labels = ["O"] if ignore is None else list(ignore)
    stride = parameters.get("stride")
    token_scores = score_tokens(model, tokenizer, inputs, max_length - 2,
                                WINDOW_STRIDE if stride is None else stride)
    return [without_overlaps(aggregate(text, tokens, id2label, strategy, ignore_labels), text)
            for text, tokens in zip(inputs, token_scores, strict=True)]


def score_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 texts: list[str], body: int, stride: int) -> list[list[TokenScores]]:
    """Each input's tokens (specials excluded) with their label probabilities.

    Text is cut into words by `word_spans`, as training rows are (encoding.py), and the
    tokenizer is given those words: its own pre-tokenizer (punctuation rules differ between
    tokenizers) never decides what a word is."""
    spans = [word_spans(text, set()) for text in texts]
    encoded = tokenizer([[text[start:end] for start, end in words]
                         for text, words in zip(texts, spans, strict=True)],
                        is_split_into_words=True, add_special_tokens=False,
                        return_offsets_mapping=True, verbose=False)
    jobs = []  # (input, window, features)
    for i in range(len(texts)):
        for window in windows(len(encoded["input_ids"][i]), body, stride):
            jobs.append((i, window, window_features(tokenizer, encoded["input_ids"][i], window)))
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
    return [_token_scores(encoded["offset_mapping"][i], encoded.word_ids(i), spans[i], probs[i])
            for i in range(len(texts))]


def _token_scores(offsets: list[tuple[int, int]], word_ids: list[int | None],
                  words: list[tuple[int, int]], probs: np.ndarray) -> list[TokenScores]:
    """Tokens with offsets into the input: the tokenizer's are relative to each word. A word's
    first and last pieces reach its edges, so characters the tokenizer normalised away (a
    combining accent) stay inside the word's entity."""
    scores = []
    for p, ((start, end), word) in enumerate(zip(offsets, word_ids, strict=True)):
        if word is None:
            continue
        word_start, word_end = words[word]
        first = p == 0 or word_ids[p - 1] != word
        last = p + 1 == len(word_ids) or word_ids[p + 1] != word
        scores.append(TokenScores(p + 1, word_start if first else word_start + start,
                                  word_end if last else word_start + end, word, probs[p]))
    return scores
