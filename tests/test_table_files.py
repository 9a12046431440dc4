"""User table files (CSV / JSONL / JSON list) as every importer reads them (`dataset_script.table_files`): bad bytes,
broken lines, rows that are not objects and huge cells are named by file and line; a row that cannot be used is left
out and listed, not fatal; a file that cannot be read is one line on the command line, however long the offending
text."""

import json

import numpy as np
import pytest
from PIL import Image

from dataset_script.importers import import_table
from dataset_script.records import StepCoTDataError
from dataset_script.table_files import MAX_CSV_FIELD_CHARS, table_file_rows
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
