"""`stepcot data build` streams: records are read from data.json one at a time, rows go to size-bounded Parquet shards
one row group at a time, and the result loads with `load_dataset(..., streaming=True)`."""

import json

import pytest

from dataset_script import record_stream
from dataset_script.parquet_export import build_hub_dataset
from dataset_script.records import StepCoTDataError


def test_build_writes_bounded_shards_that_load_streaming_and_in_full(demo_release_dir, tmp_path):
    from datasets import load_dataset

    bound = 40_000  # bytes of image payload per shard: the 60 images of 64 px make several shards
    summary = build_hub_dataset(demo_release_dir, tmp_path / "built", max_shard_bytes=bound)
    train = sorted((tmp_path / "built" / "data").glob("train-*.parquet"))
    assert len(train) > 1 and all(p.name.endswith(f"-of-{len(train):05d}-{p.name[-24:-8]}.parquet") for p in train)
    images = {p.name: p.stat().st_size for p in (demo_release_dir / "images").rglob("*.png")}
    assert max(images.values()) < bound and all(p.stat().st_size < 2 * bound for p in train)
    assert not list((tmp_path / "built" / "data").glob(".*partial"))

    streamed = load_dataset(str(tmp_path / "built"), streaming=True)
    rows = {split: list(streamed[split]) for split in summary["split_sizes"]}
    assert {split: len(r) for split, r in rows.items()} == summary["split_sizes"]
    full = load_dataset(str(tmp_path / "built"), split="train")
    assert [r["patient_id"] for r in rows["train"]] == full["patient_id"]
    assert rows["train"][0]["image"].size == (64, 64) and len(rows["train"][0]["labels"]) == 7


def test_streamed_records_equal_the_parsed_file(tmp_path, monkeypatch):
    monkeypatch.setattr(record_stream, "_BLOCK", 5)  # elements cut by block boundaries
    values = [{"a": [1, 2.5, "x, ]"]}, "é", 12345, None, {"nested": {"b": [True, False]}}]
    path = tmp_path / "data.json"
    path.write_text("\ufeff " + json.dumps(values, ensure_ascii=False, indent=1), encoding="utf-8")
    records = record_stream.JsonArrayRecords(path, error=StepCoTDataError)
    assert list(records) == values and list(records) == values and len(records) == len(values)


@pytest.mark.parametrize("text, message", [
    ("[1, 2", "the list is not closed"), ("[1 2]", "expected ',' or ']'"), ("[1,]", "before the closing"),
    ('[{"a": }]', "not valid JSON"), ("[1] [2]", "extra data"),
])
def test_a_damaged_data_json_is_one_line_naming_the_file(tmp_path, text, message):
    path = tmp_path / "data.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(StepCoTDataError, match=message) as caught:
        list(record_stream.JsonArrayRecords(path, error=StepCoTDataError))
    assert str(caught.value).startswith(str(path)) and "\n" not in str(caught.value)


def test_not_utf8_is_named_with_its_byte(tmp_path):
    path = tmp_path / "data.json"
    path.write_bytes(b'[{"a": "\xff"}]')
    with pytest.raises(StepCoTDataError, match=r"not UTF-8 text \(byte 8: b'\\xff'\)"):
        list(record_stream.JsonArrayRecords(path, error=StepCoTDataError))
