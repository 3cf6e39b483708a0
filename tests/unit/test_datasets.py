"""Reading uploaded JSONL and CSV files: every rejection names the offending line."""

import gzip
import io
import json
import zipfile
from pathlib import Path

import pytest

from app.errors import DatasetInvalid, UnsupportedMediaType
from app.ml.datasets import detect_format, read_csv, read_jsonl, read_rows

MAX_LINE = 1024 * 1024


def write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def jsonl(*rows: object) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


# --- format detection -------------------------------------------------------------------


@pytest.mark.parametrize("name,expected", [
    ("train.jsonl", "jsonl"), ("TRAIN.JSONL", "jsonl"), ("a.json", "jsonl"),
    ("a.ndjson", "jsonl"), ("data.csv", "csv"), ("Data.CSV", "csv"),
])
def test_detect_format_by_extension(name: str, expected: str) -> None:
    # The extension wins over what the content looks like.
    assert detect_format(name, b'{"text"') == expected
    assert detect_format(name, b"text,label") == expected


def test_detect_format_sniffs_content_without_extension() -> None:
    assert detect_format("upload", b'  {"text": "a"') == "jsonl"
    assert detect_format("upload", b"text,label\n") == "csv"


def gzip_bytes() -> bytes:
    return gzip.compress(jsonl({"text": "a", "label": "b"}))


def zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("train.jsonl", jsonl({"text": "a", "label": "b"}))
    return buffer.getvalue()


@pytest.mark.parametrize("head", [gzip_bytes()[:8], zip_bytes()[:8], b"PAR1\x00\x00\x00\x00",
                                  b"\x80\x04\x95\x00", b"\x80\x05\x95\x00"],
                         ids=["gzip", "zip", "parquet", "pickle4", "pickle5"])
@pytest.mark.parametrize("name", ["train.jsonl", "train.csv", "upload"])
def test_binary_signatures_are_unsupported_media(head: bytes, name: str) -> None:
    with pytest.raises(UnsupportedMediaType) as info:
        detect_format(name, head)
    assert info.value.code == "unsupported_file_type"
    assert info.value.param == "file"


# --- JSON lines -------------------------------------------------------------------------


def test_read_jsonl_yields_rows_with_line_numbers_skipping_blank_lines(tmp_path: Path) -> None:
    content = (b'{"text": "good", "label": "pos"}\n'
               b"\n"
               b"   \r\n"
               b'{"text": "bad", "label": "neg"}\r\n'
               b'{"text": "no newline", "label": "neg"}')
    rows = list(read_jsonl(write(tmp_path, "a.jsonl", content), MAX_LINE))
    assert rows == [(1, {"text": "good", "label": "pos"}),
                    (4, {"text": "bad", "label": "neg"}),
                    (5, {"text": "no newline", "label": "neg"})]


def test_read_jsonl_accepts_utf8_bom_and_non_ascii(tmp_path: Path) -> None:
    content = "\ufeff" + json.dumps({"text": "très bien ✓", "label": "pos"}, ensure_ascii=False)
    rows = list(read_jsonl(write(tmp_path, "a.jsonl", content.encode("utf-8")), MAX_LINE))
    assert rows == [(1, {"text": "très bien ✓", "label": "pos"})]


def test_read_jsonl_invalid_json_names_its_line(tmp_path: Path) -> None:
    content = jsonl({"text": "a", "label": "b"}, {"text": "c", "label": "d"}) + b'{"text": \n'
    with pytest.raises(DatasetInvalid) as info:
        list(read_jsonl(write(tmp_path, "a.jsonl", content), MAX_LINE))
    assert info.value.line == 3
    assert info.value.message.startswith("line 3: ")
    assert "not valid JSON" in info.value.message
    assert info.value.code == "invalid_dataset"


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_read_jsonl_rejects_nan_and_infinity(tmp_path: Path, constant: str) -> None:
    bad_line = f'{{"text": "x", "label": {constant}}}\n'.encode()
    content = jsonl({"text": "a", "label": "b"}) + bad_line
    with pytest.raises(DatasetInvalid) as info:
        list(read_jsonl(write(tmp_path, "a.jsonl", content), MAX_LINE))
    assert info.value.line == 2
    assert constant in info.value.message


@pytest.mark.parametrize("value", ['["text", "label"]', '"text"', "42", "null"])
def test_read_jsonl_requires_objects(tmp_path: Path, value: str) -> None:
    with pytest.raises(DatasetInvalid, match=r"^line 1: must be a JSON object"):
        list(read_jsonl(write(tmp_path, "a.jsonl", value.encode() + b"\n"), MAX_LINE))


def test_read_jsonl_nul_byte_names_line(tmp_path: Path) -> None:
    content = jsonl({"text": "a", "label": "b"}) + b'{"text": "a\x00", "label": "b"}\n'
    with pytest.raises(DatasetInvalid) as info:
        list(read_jsonl(write(tmp_path, "a.jsonl", content), MAX_LINE))
    assert info.value.line == 2
    assert "NUL" in info.value.message


def test_read_jsonl_utf16_file_is_rejected_on_line_one(tmp_path: Path) -> None:
    content = jsonl({"text": "a", "label": "b"}).decode().encode("utf-16")
    with pytest.raises(DatasetInvalid) as info:
        list(read_jsonl(write(tmp_path, "a.jsonl", content), MAX_LINE))
    assert info.value.line == 1
    assert "UTF-16" in info.value.message


def test_read_jsonl_invalid_utf8_names_line_and_byte(tmp_path: Path) -> None:
    content = jsonl({"text": "a", "label": "b"}) + b'{"text": "caf\xe9", "label": "b"}\n'
    with pytest.raises(DatasetInvalid) as info:
        list(read_jsonl(write(tmp_path, "a.jsonl", content), MAX_LINE))
    assert info.value.line == 2
    assert "not valid UTF-8" in info.value.message
    assert "byte 13" in info.value.message


def test_read_jsonl_line_too_long(tmp_path: Path) -> None:
    content = jsonl({"text": "a", "label": "b"}, {"text": "x" * 200, "label": "b"})
    with pytest.raises(DatasetInvalid, match=r"^line 2: is longer than 100 bytes"):
        list(read_jsonl(write(tmp_path, "a.jsonl", content), 100))


# --- CSV --------------------------------------------------------------------------------


def test_read_csv_rows_and_line_numbers(tmp_path: Path) -> None:
    content = b"text,label\ngood film,pos\n\"bad, really\",neg\n\"quoted \"\"x\"\"\",neg\n"
    rows = list(read_csv(write(tmp_path, "a.csv", content), MAX_LINE))
    assert rows == [(2, {"text": "good film", "label": "pos"}),
                    (3, {"text": "bad, really", "label": "neg"}),
                    (4, {"text": 'quoted "x"', "label": "neg"})]


def test_read_csv_strips_bom_and_keeps_blank_cells(tmp_path: Path) -> None:
    content = "\ufefftext,label,text_pair\r\nok,pos,\r\nfine,neg,other\r\n".encode()
    rows = list(read_csv(write(tmp_path, "a.csv", content), MAX_LINE))
    assert rows == [(2, {"text": "ok", "label": "pos", "text_pair": ""}),
                    (3, {"text": "fine", "label": "neg", "text_pair": "other"})]


def test_read_csv_extra_cells_names_line(tmp_path: Path) -> None:
    content = b"text,label\na,pos\nb,neg\nc,neg,surplus\n"
    with pytest.raises(DatasetInvalid) as info:
        list(read_csv(write(tmp_path, "a.csv", content), MAX_LINE))
    assert info.value.line == 4
    assert "more cells than the header" in info.value.message


def test_read_csv_header_with_blank_column(tmp_path: Path) -> None:
    with pytest.raises(DatasetInvalid, match=r"^line 1: the CSV header row"):
        list(read_csv(write(tmp_path, "a.csv", b"text,,label\na,b,c\n"), MAX_LINE))


@pytest.mark.parametrize("content", [b"", b"\n", b" \r\n\n"], ids=["empty", "newline", "blank"])
def test_read_csv_empty_file_has_no_rows(tmp_path: Path, content: bytes) -> None:
    # Like an empty JSONL file: no rows, which the upload reports as dataset_empty.
    assert list(read_csv(write(tmp_path, "a.csv", content), MAX_LINE)) == []


def test_read_csv_header_only_has_no_rows(tmp_path: Path) -> None:
    assert list(read_csv(write(tmp_path, "a.csv", b"text,label\n"), MAX_LINE)) == []


def test_read_csv_nul_byte_names_line(tmp_path: Path) -> None:
    content = b"text,label\na,pos\nb\x00,neg\n"
    with pytest.raises(DatasetInvalid) as info:
        list(read_csv(write(tmp_path, "a.csv", content), MAX_LINE))
    assert info.value.line == 3
    assert "NUL" in info.value.message


def test_read_csv_invalid_utf8_names_line(tmp_path: Path) -> None:
    content = b"text,label\na,pos\nb,neg\ncaf\xe9,neg\n"
    with pytest.raises(DatasetInvalid) as info:
        list(read_csv(write(tmp_path, "a.csv", content), MAX_LINE))
    assert info.value.line == 4
    assert "UTF-8" in info.value.message


def test_read_csv_row_too_long(tmp_path: Path) -> None:
    content = b"text,label\na,pos\n" + b"x" * 300 + b",neg\n"
    with pytest.raises(DatasetInvalid, match=r"^line 3: is longer than 100 bytes"):
        list(read_csv(write(tmp_path, "a.csv", content), 100))


def test_read_rows_dispatches_on_format(tmp_path: Path) -> None:
    path = write(tmp_path, "data", b"text,label\na,pos\n")
    assert list(read_rows(path, "csv", MAX_LINE)) == [(2, {"text": "a", "label": "pos"})]
    path = write(tmp_path, "data2", jsonl({"text": "a", "label": "pos"}))
    assert list(read_rows(path, "jsonl", MAX_LINE)) == [(1, {"text": "a", "label": "pos"})]
