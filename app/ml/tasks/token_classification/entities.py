"""Token predictions to entities, in the Hugging Face token-classification format.

`aggregation_strategy` defaults to `simple`, as the hosted Inference API does for NER; `none`
answers per token with `entity` and `index` instead of `entity_group`. Every other strategy
tags whole words, so no strategy ever splits a word into several entities: `simple` and
`first` take a word's tag from its first sub-token (the one training labels), `average` from
its sub-tokens' mean scores, `max` from its most confident sub-token. `word` is always
`text[start:end]`, the caller's own characters, rather than the tokenizer's decoding (which, for
an uncased model, is lower-cased and accent-stripped). Tags are read the conlleval / Hugging
Face way: a stray `I-X` starts a new X entity.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.ml.tasks.token_classification.tags import split_tag

AGGREGATIONS = ("none", "simple", "first", "average", "max")
DEFAULT_AGGREGATION = "simple"


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
        if strategy in ("simple", "first"):
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
    entities = []
    for group in _groups(_word_tags(tokens, id2label, strategy)):
        kind = split_tag(group[0].tag)[1]
        if kind in ignore_labels:
            continue
        start, end = group[0].start, group[-1].end
        entities.append({"entity_group": kind,
                         "score": float(np.mean([item.score for item in group])),
                         "word": text[start:end], "start": start, "end": end})
    return entities


def without_overlaps(entities: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """Two tokens can share characters (one character read as two pieces); keep spans apart."""
    kept: list[dict[str, Any]] = []
    for entity in entities:
        if kept and entity["start"] < kept[-1]["end"]:
            entity["start"] = kept[-1]["end"]
            entity["word"] = text[entity["start"]:entity["end"]]
        if entity["start"] < entity["end"]:
            kept.append(entity)
    return kept

