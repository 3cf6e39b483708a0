"""Reading uploaded datasets (JSON lines or CSV) row by row, with the line number of each row."""

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from app.errors import DatasetInvalid, UnsupportedMediaType

# One dataset row as read from a file: the task adapters validate and reshape it.
Row = dict[str, Any]

# Magic numbers of archives and binary formats we refuse outright (gzip, zip, parquet, pickle).
_BINARY_SIGNATURES = (b"\x1f\x8b", b"PK\x03\x04", b"PAR1", b"\x80\x04", b"\x80\x05")

# CSV cells that hold a list (a multi-label row's labels), and what separates the items: a
# CSV cell is one string, and `|` seldom appears in a label name. A blank cell is no item.
CSV_LIST_COLUMNS = {"labels": "|"}


def detect_format(filename: str, head: bytes) -> str:
    if head.startswith(_BINARY_SIGNATURES):
        raise UnsupportedMediaType("Only JSON lines (.jsonl) and CSV (.csv) files are accepted.",
                                   param="file")
    lowered = filename.lower()
    if lowered.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if lowered.endswith(".csv"):
        return "csv"
    return "jsonl" if head.lstrip().startswith(b"{") else "csv"


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _decode(raw: bytes, line: int) -> str:
    if b"\x00" in raw:
        raise DatasetInvalid("contains a NUL byte; is the file UTF-16 or binary?", line=line)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetInvalid(f"is not valid UTF-8 (byte {exc.start})", line=line) from None


def read_jsonl(path: Path, max_line_bytes: int) -> Iterator[tuple[int, Row]]:
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if len(raw) > max_line_bytes:
                raise DatasetInvalid(f"is longer than {max_line_bytes} bytes", line=line_no)
            text = _decode(raw, line_no).strip().lstrip("\ufeff")
            if not text:
                continue
            try:
                value = json.loads(text, parse_constant=_reject_constant)
            except ValueError as exc:
                raise DatasetInvalid(f"is not valid JSON ({exc})", line=line_no) from None
            if not isinstance(value, dict):
                raise DatasetInvalid("must be a JSON object", line=line_no)
            yield line_no, value


def read_csv(path: Path, max_line_bytes: int) -> Iterator[tuple[int, Row]]:
    raw = path.read_bytes()
    if not raw.strip():
        return  # an empty file has no rows; the caller reports it as such
    text = _decode_csv(raw)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames or any(not name for name in reader.fieldnames):
        raise DatasetInvalid("the CSV header row is missing or has an empty column name", line=1)
    try:
        for record in reader:
            line_no = reader.line_num
            if None in record:
                raise DatasetInvalid("has more cells than the header", line=line_no)
            if sum(len(v or "") for v in record.values()) > max_line_bytes:
                raise DatasetInvalid(f"is longer than {max_line_bytes} bytes", line=line_no)
            # A blank cell stays an empty string: the header names the row's fields, so a
            # blank under `label` is a missing label, not a row of plain text.
            yield line_no, {k: _csv_cell(k, v) for k, v in record.items() if v is not None}
    except csv.Error as exc:
        raise DatasetInvalid(f"is not valid CSV ({exc})", line=reader.line_num) from None


def _csv_cell(column: str, value: str) -> str | list[str]:
    separator = CSV_LIST_COLUMNS.get(column)
    if separator is None:
        return value
    # Items keep their text apart from the spaces around them; an empty item stays, so the
    # task can name it ("a||b" is a mistake, not two labels).
    return [item.strip() for item in value.split(separator)] if value.strip() else []


def _decode_csv(raw: bytes) -> str:
    for line_no, chunk in enumerate(raw.split(b"\n"), start=1):
        _decode(chunk, line_no)
    return raw.decode("utf-8-sig")


def read_rows(path: Path, fmt: str, max_line_bytes: int) -> Iterator[tuple[int, Row]]:
    reader = read_jsonl if fmt == "jsonl" else read_csv
    return reader(path, max_line_bytes)
