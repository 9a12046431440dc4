"""`stepcot data import` writes data.json one record at a time (into a hidden partial file moved into place at the
end), reads a table one row at a time, and gives the same data.json text as writing the whole list at once."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from dataset_script import importers
from dataset_script.importers import LabelMapping, import_table, iter_table_rows, write_release
from dataset_script.record_stream import JsonArrayWriter
from dataset_script.records import StepCoTDataError


def _table(tmp_path, n, labels=("Normal", "Effusion", "Bogus")):
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i in range(n):
        name = f"im{i:03d}.png"
        Image.fromarray(np.full((8, 8), i % 250, dtype=np.uint8)).save(images / name)
        rows.append({"Image Index": name, "Finding Labels": labels[i % len(labels)], "Patient ID": f"p{i // 2}",
                     "View": "PA", "note": "é ünïcode"})
    rows.append({"Image Index": "gone.png", "Finding Labels": "Normal", "Patient ID": "p-gone", "View": "PA",
                 "note": ""})
    path = tmp_path / "table.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    mapping = tmp_path / "mapping.json"
    mapping.write_text(json.dumps({"labels": {"Normal": {"Diagnosis": "Normal"},
                                              "Effusion": {"Diagnosis": "Effusion"}},
                                   "patient_id": "Patient ID"}), encoding="utf-8")
    return path, images, mapping


def test_records_reach_the_file_as_they_are_made(tmp_path, monkeypatch):
    table, images, mapping_file = _table(tmp_path, 30)
    out = tmp_path / "release"
    writers, written_before_row = [], []

    class Watched(JsonArrayWriter):
        def __init__(self, path):
            super().__init__(path)
            writers.append(self)

    monkeypatch.setattr(importers, "JsonArrayWriter", Watched)

    def watched(rows):
        for row in rows:  # before each row is mapped: how many records went to the partial file so far
            written_before_row.append(writers[0].count if writers else None)
            yield row

    report = write_release(watched(iter_table_rows(table, images)), LabelMapping.from_file(mapping_file), out,
                           origin="test")
    assert report["records"] == 20 and report["rows"] == 31 and report["left_out"] == 11
    assert report["patients"] == len({f"p{i // 2}" for i in range(30) if i % 3 != 2})
    assert written_before_row[:4] == [0, 1, 2, 2] and written_before_row[-1] == 20
    text = (out / "data.json").read_text(encoding="utf-8")
    records = json.loads(text)
    assert text == json.dumps(records, indent=1, ensure_ascii=False) and len(records) == 20
    assert not (out / ".data.json.partial").exists()
    assert [r["source_labels"] for r in records[:2]] == [["Normal"], ["Effusion"]] and records[0]["view"] == "PA"


def test_import_table_reads_the_table_row_by_row_twice_without_a_mapping(tmp_path, monkeypatch):
    table, images, _ = _table(tmp_path, 12, labels=("Normal", "Effusion"))
    opened = []
    real = importers._table_records
    monkeypatch.setattr(importers, "_table_records", lambda path: opened.append(path) or real(path))
    monkeypatch.setattr(importers, "table_rows", None)  # the import never makes the list of rows
    report = import_table(table, tmp_path / "release", images_dir=images)
    assert report["records"] == 12 and report["answers"] == {"Diagnosis": {"Normal": 6, "Effusion": 6}}
    assert len(opened) == 3  # the column check (first row), the labels for the schema, the records


def test_nothing_mapped_leaves_no_data_json(tmp_path):
    table, images, mapping_file = _table(tmp_path, 6, labels=("Bogus",))
    out = tmp_path / "release"
    with pytest.raises(StepCoTDataError, match="no row could be mapped"):
        import_table(table, out, mapping_file=mapping_file, images_dir=images)
    assert not (out / "data.json").exists() and not (out / ".data.json.partial").exists()


@pytest.mark.parametrize("name, text, message", [
    ("t.csv", "Image Index,Finding Labels\n", "no rows"),
    ("t.csv", "name,what\na.png,x\n", "no image column"),
    ("t.csv", "image,other\na.png,x\n", "no labels column"),
    ("t.json", '{"image": "a.png", "label": "x"}', "expected a JSON list of rows"),
    ("t.json", '[{"image": "a.png", "label": "x"}', "the list is not closed"),
])
def test_unusable_tables_are_one_line_naming_the_file(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(StepCoTDataError, match=message) as caught:
        list(iter_table_rows(path))
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_json_list_table_streams(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps([{"image": "a.png", "label": "x|y"}, {"image": "b.png", "label": "z"}]),
                    encoding="utf-8")
    rows = list(iter_table_rows(path))
    assert [r["labels"] for r in rows] == [["x", "y"], ["z"]] and all(r["missing"] for r in rows)
    assert [r["where"] for r in rows] == ["t.json:1", "t.json:2"]


def test_json_array_writer_equals_dumping_the_list(tmp_path):
    values = [{"a": [1, {"b": "x\ny\u2028é"}], "c": []}, {}, [], "s", None, 2.5]
    with JsonArrayWriter(tmp_path / "data.json") as out:
        for value in values:
            out.write(value)
    assert (tmp_path / "data.json").read_text(encoding="utf-8") == json.dumps(values, indent=1, ensure_ascii=False)
    with JsonArrayWriter(tmp_path / "empty.json"):
        pass
    assert json.loads((tmp_path / "empty.json").read_text()) == []
