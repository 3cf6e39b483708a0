"""Generated uploads: never a 5xx, and a rejection names the first bad line."""

import csv
import io
import json
from dataclasses import dataclass

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.helpers import assert_error, upload

LABELS = ["positive", "negative", "neutral"]
words = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")),
                min_size=1, max_size=30).filter(lambda s: s.strip() != "")


@dataclass
class Row:
    line: str  # the row as it appears in the file
    valid: bool
    plain: bool = False  # text alone: bad beside labelled rows, fine in a file of plain text
    unreadable: bool = False  # not a JSON object at all: the reader stops at it


def good_row(text: str, label: str) -> Row:
    return Row(json.dumps({"text": text, "label": label}), True)


bad_rows = st.one_of(
    st.builds(lambda t: Row(json.dumps({"text": t}), False, plain=True), words),     # no label
    st.builds(lambda t, n: Row(json.dumps({"text": t, "label": n}), False), words,
              st.integers()),                                                       # label type
    st.builds(lambda label: Row(json.dumps({"text": "  ", "label": label}), False),
              st.sampled_from(LABELS)),                                             # empty text
    st.builds(lambda t: Row('{"text": ' + json.dumps(t) + ', "label": ', False, unreadable=True),
              words),                                                               # cut
    st.just(Row("[1, 2, 3]", False, unreadable=True)),                              # not object
    st.just(Row('{"text": "a", "label": NaN}', False, unreadable=True)),            # NaN
)
rows = st.lists(st.one_of(st.builds(good_row, words, st.sampled_from(LABELS)), bad_rows),
                min_size=1, max_size=40)
EXAMPLES = settings(max_examples=60, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@EXAMPLES
@given(rows)
def test_generated_jsonl_uploads(client: TestClient, rows: list[Row]) -> None:
    content = "".join(row.line + "\n" for row in rows).encode()
    response = upload(client, content, "generated.jsonl")
    assert response.status_code < 500, response.text
    first_bad = expected_bad_line(rows)
    if first_bad is not None:
        assert_error(response, 422, None, "file", f"line {first_bad}")
    elif response.status_code != 200:
        # Every row is fine; only dataset-wide rules (size, label variety) can refuse it.
        error = assert_error(response, 422)
        assert error["code"] in ("dataset_too_small", "invalid_dataset"), error


def expected_bad_line(rows: list[Row]) -> int | None:
    """The line a rejection must name. Plain-text rows are read ahead until a row shows the
    file's task: a labelled row makes them rows missing their label; if every row is plain
    text, the file is text for continued pretraining and none of them is bad."""
    plain_lines = []
    task_known = False
    for number, row in enumerate(rows, start=1):
        if row.unreadable:
            return number
        if row.plain and not task_known:
            plain_lines.append(number)
            continue
        if plain_lines:
            return plain_lines[0]
        task_known = True
        if not row.valid:
            return number
    return None


csv_texts = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")),
                    max_size=30)


@EXAMPLES
@given(st.lists(st.tuples(csv_texts, st.sampled_from(LABELS + [""])), min_size=1,
                max_size=40))
def test_generated_csv_uploads(client: TestClient, records: list[tuple[str, str]]) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["text", "label"])
    lines = [1]
    for text, label in records:
        writer.writerow([text, label])
        lines.append(buffer.getvalue().count("\n"))  # the file line this record ends on
    response = upload(client, buffer.getvalue().encode(), "generated.csv")
    assert response.status_code < 500, response.text
    first_bad = next((i for i, (text, label) in enumerate(records)
                      if not text.strip() or not label), None)
    if first_bad is not None:
        assert_error(response, 422, None, "file", f"line {lines[first_bad + 1]}")
