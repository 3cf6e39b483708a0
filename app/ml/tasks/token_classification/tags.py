"""IOB2 tags: `O`, `B-X` (an X entity starts) and `I-X` (it goes on).

An `I-X` that does not continue an X entity (first tag, after `O`, or after another type) is
**rejected** at upload, naming the line, the tag's position and the fix (`B-X`). It is not
repaired: a file in IOB1 or with broken spans would otherwise train silently on entity
boundaries nobody wrote. Model *outputs* are read the conlleval / Hugging Face way instead: a
stray `I-X` starts a new X entity.
"""

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any


def split_tag(tag: str) -> tuple[str, str]:
    """('B' | 'I', type); `O` reads as ('I', 'O') so runs of O group like the HF pipeline."""
    if tag.startswith(("B-", "I-")):
        return tag[0], tag[2:]
    return "I", tag


def is_tag(tag: Any) -> bool:
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


def tag_set(tags: Iterable[str]) -> list[str]:
    """`O`, then `B-` and `I-` of every entity type in `tags`, types in sorted order."""
    kinds = sorted({split_tag(tag)[1] for tag in tags} - {"O"})
    return ["O"] + [f"{bi}-{kind}" for kind in kinds for bi in ("B", "I")]
