"""Upload rows, in either shape, to canonical `{"tokens", "tags"}` rows.

A row is tagged tokens (`{"tokens", "tags"}`, the tags valid IOB2, see `tags`) or text with
character spans (`{"text", "entities"}`). Text rows become tokens at upload: words are runs of
letters and digits or single other characters (combining marks, joiners and emoji modifiers
stay with the character before), and every entity boundary is also a word boundary, so no span
is lost. Offsets count code points of the decoded text. An offset inside a character (before a
combining mark, joiner, variation selector or emoji modifier) is rejected.
"""

import unicodedata
from collections.abc import Sequence
from typing import Any

from app.errors import DatasetInvalid
from app.ml.tasks.base import Row
from app.ml.tasks.token_classification.tags import bio_error, is_tag

# Characters that belong to the character before them: a span edge here splits a character.
_JOINERS = {"\u200d", "\u20e3"}
_EMOJI_MODIFIERS = range(0x1F3FB, 0x1F400)


def canonical_row(row: Row, line: int) -> Row:
    """The row as checked tokens and tags, or DatasetInvalid naming the line and field."""
    if "tokens" in row or "tags" in row:
        tokens = _checked_tokens(row, line)
        return {"tokens": tokens, "tags": _checked_tags(row, line, len(tokens))}
    return _text_row(row, line)


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
        if not is_tag(tag):
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
