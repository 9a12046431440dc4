"""Hostile releases (bad records, images and splits, near-duplicate images across splits): every bad input is
named; strict mode fails, lenient mode skips or resolves it and lists it in the report; nothing is guessed silently."""

import io
import json
import struct
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dataset_script.records import StepCoTDataError
from dataset_script.release import StepCoTRelease
from trainers import cli


def _records(folder):
    return json.loads((folder / "data.json").read_text())


def _write_records(folder, records):
    (folder / "data.json").write_text(json.dumps(records, indent=1))


def _split_rows(folder, name):
    return pd.read_excel(folder / name, dtype=str)


def _index_of(folder, split_file):
    """Index in data.json of the first record listed in `split_file`."""
    image = _split_rows(folder, split_file)["image_path"].iloc[0]
    return next(i for i, r in enumerate(_records(folder)) if r["image_path"] == image)


def _texts(release):
    return [p["text"] for entry in release.report["skipped"] for p in entry["problems"]] + \
        [w["text"] for w in release.report.get("warnings", [])]


def _skipped_when_lenient_fatal_when_strict(folder, index, fragments, strict_match):
    """Lenient validation leaves record `index` out with a problem naming it and every fragment; strict validation
    fails matching `strict_match`. Returns the lenient release."""
    lenient = StepCoTRelease(folder, strict=False)
    assert index not in {r["index"] for r in lenient.records}
    assert any(f"record {index}" in t and all(f in t for f in fragments) for t in _texts(lenient))
    with pytest.raises(StepCoTDataError, match=strict_match):
        StepCoTRelease(folder)
    return lenient


# -- #8: the by-name image fallback never takes another record's image --------------------------------------------


def test_image_fallback_by_name_never_takes_another_records_image(release):
    records = _records(release)
    owner = records[0]["image_path"]  # images/demo-000000-0.png, record 0's own image
    records[5]["image_path"] = "missing_subdir/" + owner.split("/")[-1]
    _write_records(release, records)
    _skipped_when_lenient_fatal_when_strict(release, 5, ("not guessing across records", "record 0"),
                                            "record 5.*not guessing across records")


def test_image_name_in_two_image_folders_is_ambiguous(release):
    records = _records(release)
    image = Image.new("L", (32, 32), 40)
    image.save(release / "images" / "twin.png")
    image.save(release / "images_2" / "twin.png")
    records[5]["image_path"] = "other_folder/twin.png"
    _write_records(release, records)
    with pytest.raises(StepCoTDataError, match=r"record 5.*matches several files.*not guessing"):
        StepCoTRelease(release)


def test_unique_file_name_fallback_still_resolves(release):
    records = _records(release)
    name = records[5]["image_path"].split("/")[-1]
    records[5]["image_path"] = "moved/" + name  # no other record uses images/<name>: found by name, with a note
    _write_records(release, records)
    strict = StepCoTRelease(release)
    assert any(r["index"] == 5 for r in strict.records)
    assert any("found by file name" in n["text"] for n in strict.report["notes"])


# -- #9: truncated JPEGs are caught at validation ------------------------------------------------------------------


def test_truncated_jpeg_is_skipped_in_lenient_mode_and_fails_strict(release):
    records = _records(release)
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)).save(buffer, "JPEG")
    (release / "images" / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) * 2 // 3])
    records[2]["image_path"] = "images/truncated.jpg"
    _write_records(release, records)
    _skipped_when_lenient_fatal_when_strict(release, 2, ("truncated",), "record 2.*unreadable image.*truncated")


# -- #10: a record listed in two split files is reported in every mode ------------------------------------------


def test_record_in_two_split_files_is_reported_in_every_mode(release, tmp_path, capsys):
    train = _split_rows(release, "train.xlsx")
    index = _index_of(release, "train.xlsx")
    pd.concat([_split_rows(release, "test.xlsx"), train.iloc[:1]]).to_excel(release / "test.xlsx", index=False)
    lenient = StepCoTRelease(release, strict=False)
    kept = [r for r in lenient.records if r["index"] == index]
    assert [r["split"] for r in kept] == ["train"]  # kept once, in its first split
    assert any(f"record {index}" in t and "train.xlsx, test.xlsx" in t and "leakage" in t for t in _texts(lenient))
    with pytest.raises(StepCoTDataError, match="leakage"):
        StepCoTRelease(release)
    assert cli.main(["data", "validate", "--source", str(release)]) == 1
    assert "train.xlsx, test.xlsx" in capsys.readouterr().out
    out = tmp_path / "built"
    assert cli.main(["data", "build", "--source", str(release), "--out", str(out), "--lenient"]) == 0
    assert "1 other problems resolved leniently" in capsys.readouterr().err
    report = json.loads((out / "validation_report.json").read_text())
    assert any("train.xlsx, test.xlsx" in w["text"] for w in report["warnings"])


# -- #11: records that disagree on a step's options or their order ----------------------------------------------


def test_options_in_another_order_are_reported_reordered_and_fail_strict(release):
    records = _records(release)
    step = records[3]["vqa_chain"][1]
    majority = list(step["options"])
    step["options"] = majority[::-1]  # same options, reversed: the label index would change meaning
    _write_records(release, records)
    with pytest.raises(StepCoTDataError, match=r"record 3.*vqa_chain\[1\]\.options.*another order"):
        StepCoTRelease(release)
    lenient = StepCoTRelease(release, strict=False)
    record = next(r for r in lenient.records if r["index"] == 3)
    assert record["vqa_chain"][1]["options"] == majority
    assert record["labels"][1] == majority.index(step["answer"])
    assert any("record 3" in t and "another order" in t for t in _texts(lenient))


def test_options_that_differ_are_skipped_in_lenient_mode(release):
    records = _records(release)
    options = records[3]["vqa_chain"][1]["options"]
    records[3]["vqa_chain"][1]["options"] = ["Scattered" if o == "Diffuse" else o for o in options]
    if records[3]["vqa_chain"][1]["answer"] == "Diffuse":
        records[3]["vqa_chain"][1]["answer"] = "Scattered"
    _write_records(release, records)
    _skipped_when_lenient_fatal_when_strict(release, 3, ("differ from the options",),
                                            "record 3.*differ from the options")


# -- #12: lenient mode survives any single bad input ---------------------------------------------------------------

ODD_VALUES = [None, [], {}, 7, 1.5, float("nan"), True, "x" * 10_000, ["a", ["b"]], {"k": {"k": 1}}, -1]
ODD_FIELDS = ["patient_id", "image_path", "vqa_chain", "report", "origin", "view", "vqa_chain.2"] + [
    f"vqa_chain.{step}.{key}" for step in (0, 3) for key in ("options", "answer", "question", "step", "reasoning")]


def test_any_odd_field_value_is_a_named_problem_never_a_crash(tiny_release):
    from dataset_script.records import parse_record

    record = _records(tiny_release)[5]
    for field in ODD_FIELDS:
        for value in ODD_VALUES:
            broken = json.loads(json.dumps(record))
            *parents, last = field.split(".")
            target = broken
            for key in parents:
                target = target[int(key)] if key.isdigit() else target[key]
            target[int(last) if last.isdigit() else last] = value
            clean, problems, _ = parse_record(broken, 5, image_root=tiny_release)  # never raises
            assert clean is not None or (problems and all(p["field"] and p["message"] for p in problems)), \
                (field, value)


def _png_header_only(width, height):
    """A PNG that claims width x height pixels but holds a few bytes (what a decompression bomb looks like to a
    header reader)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("width, height", [(30_000, 30_000), (11_000, 10_000)])
def test_decompression_bomb_is_skipped_with_a_note(release, width, height):
    records = _records(release)
    (release / "images" / "bomb.png").write_bytes(_png_header_only(width, height))
    records[1]["image_path"] = "images/bomb.png"
    _write_records(release, records)
    lenient = _skipped_when_lenient_fatal_when_strict(release, 1, ("pixels",), "record 1.*pixels")
    assert len(lenient.records) > 10


def test_non_utf8_data_json_is_a_named_error_with_byte_offset(release):
    text = (release / "data.json").read_text()
    data = text.replace("The lungs are clear", "Caf\udce9 lungs are clear", 1).encode("utf-8", "surrogateescape")
    (release / "data.json").write_bytes(data)
    offset = data.index(b"\xe9")
    for strict in (True, False):
        with pytest.raises(StepCoTDataError, match=rf"data\.json: not UTF-8 text \(byte {offset}"):
            StepCoTRelease(release, strict=strict)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 not really a workbook"], ids=["empty", "corrupt"])
def test_empty_or_corrupt_split_file(release, content):
    test_records = len(_split_rows(release, "test.xlsx"))
    (release / "test.xlsx").write_bytes(content)
    with pytest.raises(StepCoTDataError, match="test.xlsx: unreadable split file"):
        StepCoTRelease(release)
    lenient = StepCoTRelease(release, strict=False)
    assert lenient.split("test") == [] and len(lenient.skipped) == test_records
    assert any("test.xlsx: unreadable split file" in t for t in _texts(lenient))


def test_deeply_nested_data_json_is_a_named_error(release):
    (release / "data.json").write_text("[" * 100_000 + "]" * 100_000)
    for strict in (True, False):
        with pytest.raises(StepCoTDataError, match="data.json: JSON nested too deeply"):
            StepCoTRelease(release, strict=strict)


def test_bad_lines_in_data_jsonl_are_skipped_and_listed(release):
    records = _records(release)
    lines = [json.dumps(r).encode() for r in records]
    lines[2] = b'{"patient_id": "broken", '  # cut short
    lines[4] = b"[" * 100_000 + b"]" * 100_000  # nested too deeply
    lines[6] = lines[6].replace(b"demo", b"d\xe9mo", 1)  # a Latin-1 byte
    (release / "data.json").unlink()
    (release / "data.jsonl").write_bytes(b"\n".join(lines))
    with pytest.raises(StepCoTDataError, match=r"data\.jsonl:3: not valid JSON"):
        StepCoTRelease(release)
    lenient = StepCoTRelease(release, strict=False)
    assert {r["index"] for r in lenient.records}.isdisjoint({2, 4, 6})
    assert len(lenient.records) + len(lenient.skipped) == len(records)
    texts = _texts(lenient)
    assert any("data.jsonl line 3" in t and "not valid JSON" in t for t in texts)
    assert any("data.jsonl line 5" in t and "nested too deeply" in t for t in texts)
    assert any("data.jsonl line 7" in t and "not UTF-8" in t for t in texts)


@pytest.mark.parametrize("strict", [True, False])
def test_empty_release_fails_at_validation(release, strict):
    _write_records(release, [])
    with pytest.raises(StepCoTDataError, match="no records"):
        StepCoTRelease(release, strict=strict)


def test_release_with_no_usable_record_fails_at_validation_in_lenient_mode(release, capsys):
    records = _records(release)
    for record in records:  # (a chain that leaves steps out is a valid partial chain; an unknown answer is not)
        record["vqa_chain"][6]["answer"] = "Z"
    _write_records(release, records)
    with pytest.raises(StepCoTDataError, match=f"no usable records \\({len(records)} in the release, "
                                               f"{len(records)} skipped"):
        StepCoTRelease(release, strict=False)
    assert cli.main(["data", "validate", "--source", str(release)]) == 1
    assert "no usable records" in capsys.readouterr().err


# -- near-duplicate images across splits --------------------------------------------------------------------------


def test_near_duplicate_image_in_another_split_is_reported_and_fails_strict(release):
    records = _records(release)
    original, copy = _index_of(release, "train.xlsx"), _index_of(release, "test.xlsx")
    image = Image.open(release / records[original]["image_path"])
    buffer = io.BytesIO()
    image.resize((40, 40), Image.BICUBIC).save(buffer, "JPEG", quality=80)  # resized and re-saved
    (release / records[copy]["image_path"]).write_bytes(buffer.getvalue())
    assert records[copy]["patient_id"] != records[original]["patient_id"]  # patient grouping cannot catch it
    with pytest.raises(StepCoTDataError, match=f"record {copy}.*near-duplicate of record {original}"):
        StepCoTRelease(release)
    lenient = StepCoTRelease(release, strict=False)
    assert copy not in {r["index"] for r in lenient.records} and original in {r["index"] for r in lenient.records}
    (pair,) = lenient.report["near_duplicates"]
    assert pair["kept"]["index"] == original and pair["skipped"]["index"] == copy
    assert pair["kept"]["split"] == "train" and pair["skipped"]["split"] == "test" and pair["distance_bits"] <= 10


def test_distinct_real_chest_xrays_are_not_near_duplicates(shared_data_dir):
    from dataset_script.images import NEAR_DUPLICATE_MAX_DISTANCE, inspect_image

    paths = sorted((shared_data_dir / "nih-chestxray14-images").rglob("*.png"))[:30]
    hashes = np.array([inspect_image(p, perceptual_hash=True)["phash"] for p in paths])
    distances = (hashes[:, None] != hashes[None]).sum(-1)[np.triu_indices(len(paths), 1)]
    assert len(paths) >= 20 and distances.min() > NEAR_DUPLICATE_MAX_DISTANCE
