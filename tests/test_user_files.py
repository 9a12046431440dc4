"""A user's files as the importers and commands read them (`dataset_script.user_files`): bad bytes, broken lines,
rows that are not objects and huge cells in table files are named by file and line; a row that cannot be used is
left out and listed, not fatal; a file that cannot be read is one line on the command line, however long the
offending text. Mapping, schema, metrics and annotation files: not UTF-8, nested too deeply, or a YAML whose aliases
expand to a billion values are one-line errors, not tracebacks or hangs."""

import json

import numpy as np
import pytest
from PIL import Image

from dataset_script.importers import import_table
from dataset_script.records import StepCoTDataError
from dataset_script.user_files import MAX_CSV_FIELD_CHARS, check_document_size, read_json_file, table_file_rows
from trainers import cli


@pytest.fixture
def images(tmp_path):
    for index, name in enumerate(("a.png", "b.png", "c.png")):
        pixels = np.full((40, 40), 60 + 60 * index, dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / name)
    return tmp_path


def _rows(path):
    return [(number, row if isinstance(row, dict) else str(row)) for number, row in table_file_rows(path)]


def test_csv_rows_are_numbered_by_the_line_they_start_on(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b'\xef\xbb\xbfimage,labels,note\r\na.png,Normal,"two\nlines"\r\n,,\r\nb.png,X,n,extra\r\n')
    rows = _rows(path)
    assert [number for number, _ in rows] == [2, 5]  # the row of empty cells says nothing
    assert rows[0][1] == {"image": "a.png", "labels": "Normal", "note": "two\nlines"}  # byte-order mark dropped
    assert rows[1][1][None] == ["extra"]  # cells beyond the header are kept, as csv.DictReader keeps them


@pytest.mark.parametrize("payload, line", [(b"image,labels\na.png,Normal\xe9\n", 2),
                                           ("image,labels\na.png,Normal\n".encode("utf-16"), 1),
                                           (b"image,labels\na.png,x\nb.png,\xff\xfe\n", 3)])
@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_bytes_that_are_not_utf8_are_named_by_their_line(tmp_path, payload, line, suffix):
    path = tmp_path / f"t{suffix}"
    path.write_bytes(payload)
    with pytest.raises(StepCoTDataError, match=rf"t{suffix}:{line}: not UTF-8 text .*re-save the file as UTF-8"):
        list(table_file_rows(path, error=StepCoTDataError))


def test_a_long_text_cell_is_read_and_a_broken_one_is_named(tmp_path):
    report = "word " * 60_000  # 300 KB: over Python's csv default of 128 KiB
    path = tmp_path / "reports.csv"
    path.write_text(f'image,report\na.png,"{report}"\n', encoding="utf-8")
    assert _rows(path)[0][1]["report"] == report
    path.write_text('image,report\na.png,"' + "x" * (MAX_CSV_FIELD_CHARS + 1) + '"\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"reports\.csv:2: not a readable CSV row \(field larger than field limit"):
        list(table_file_rows(path))


def test_jsonl_and_json_rows_that_are_not_objects_are_errors_in_place(tmp_path):
    lines = ['{"image": "a.png"}', '{"image": ', "[1, 2]", "", "[" * 50_000, '"text"', '{"image": "b.png"}']
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    where = tmp_path / "t.jsonl"
    assert _rows(where) == [
        (1, {"image": "a.png"}), (2, f"{where}:2: not valid JSON (Expecting value)"),
        (3, f"{where}:3: expected an object, got list"), (5, f"{where}:5: JSON nested too deeply to read"),
        (6, f"{where}:6: expected an object, got str"), (7, {"image": "b.png"})]
    (tmp_path / "t.json").write_text(json.dumps([{"image": "a.png"}, 5, None]), encoding="utf-8")
    assert [row if isinstance(row, dict) else row.split(": ", 1)[1] for _, row in _rows(tmp_path / "t.json")] == [
        {"image": "a.png"}, "expected an object, got int", "expected an object, got NoneType"]


def test_import_leaves_unusable_rows_out_and_lists_them(images):
    table = images / "t.jsonl"
    table.write_text("\n".join([json.dumps({"image": "a.png", "labels": "Normal"}), '{"image": "b.png", "labels"',
                                "[1]", json.dumps({"image": "b.png", "labels": "Pneumonia"}),
                                json.dumps({"image": "c.png", "labels": "Normal"})]) + "\n", encoding="utf-8")
    report = import_table(table, images / "release")
    assert report["records"] == 3 and report["left_out"] == 2
    assert [(row["where"], row["reason"].split(": ", 1)[1]) for row in report["left_out_rows"]] == [
        ("t.jsonl:2", "not valid JSON (Expecting ':' delimiter)"), ("t.jsonl:3", "expected an object, got list")]


@pytest.mark.parametrize("layout", ["table", "reports"])
def test_the_command_line_gives_one_bounded_line_for_an_unreadable_table(images, capsys, layout):
    latin = images / "latin.csv"
    latin.write_bytes(b"image,labels,report\na.png,Normal\xe9,clear lungs\n")
    assert cli.main(["data", "import", layout, "--source", str(latin), "--out", str(images / "out1")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "latin.csv:2: not UTF-8 text" in err and "Traceback" not in err
    huge = images / "huge.csv"
    huge.write_text('image,labels\na.png,"' + "x" * 200_000 + '"\n', encoding="utf-8")  # one label, no mapping
    assert cli.main(["data", "import", "table", "--source", str(huge), "--out", str(images / "out2")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("stepcot data import: error: found 1 label(s)") and len(err) < 800
    assert "more characters)" in err and err.count("\n") == 1


def _billion_laughs() -> str:
    text, previous = 'a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]\n', "a"
    for name in "bcdefghi":
        text += f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]\n"
        previous = name
    return text + "labels: {Normal: {Diagnosis: *i}, Pneumonia: {}}\n"


@pytest.mark.parametrize("name, content, message", [
    ("bomb.yaml", _billion_laughs().encode(), "the document expands to more than 1,000,000 values"),
    ("latin.yaml", b"labels: {Normal\xe9: {}}\n", r"not UTF-8 text \(byte 15: b'\\xe9'\)"),
    ("deep.json", b"[" * 100_000, "cannot read the mapping file"),
    ("steps.yaml", b"steps: 5\nlabels: {Normal: {}}\n", "'steps' must list"),
])
def test_a_hostile_mapping_file_is_one_line_and_never_hangs(images, capsys, name, content, message):
    (images / "t.csv").write_text("image,labels\na.png,Normal\nb.png,Pneumonia\n", encoding="utf-8")
    (images / name).write_bytes(content)
    assert cli.main(["data", "import", "table", "--source", str(images / "t.csv"), "--mapping", str(images / name),
                     "--out", str(images / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and name in err and "Traceback" not in err
    assert __import__("re").search(message, err), err


def test_document_size_counts_every_repetition_of_a_shared_part():
    shared = ["x"] * 10
    check_document_size({"a": [shared] * 10}, "doc", limit=200)  # 1 + 1 + 1 + 10 + 100 values
    with pytest.raises(ValueError, match="doc: the document expands to more than 100 values"):
        check_document_size({"a": [shared] * 10}, "doc", limit=100)


@pytest.mark.parametrize("content, message", [(b"[" * 100_000, "JSON nested too deeply to read"),
                                              (b'{"a": 1}\xff', "not UTF-8 text"), (b"{oops", "not valid JSON")])
def test_json_files_of_every_command_are_named_errors(tmp_path, capsys, content, message):
    path = tmp_path / "metrics.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"metrics.json: {message}"):
        read_json_file(path)
    assert cli.main(["report", str(tmp_path)]) != 0  # `stepcot report` reads a run folder's metrics.json
    err = capsys.readouterr().err
    assert "metrics.json" in err and message in err and "Traceback" not in err and err.count("\n") == 1
    schema = tmp_path / "release" / "schema.json"
    schema.parent.mkdir()
    schema.write_bytes(content)
    from dataset_script.schema import read_schema_file

    with pytest.raises(StepCoTDataError, match=f"schema.json: {message}"):
        read_schema_file(schema)
