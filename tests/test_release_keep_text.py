"""A release read with `keep_text=False` (what `stepcot data build` uses: slim records, the text re-read from
data.json when each row is written) gives the same rows, split assignment, skip list and report as a release that
keeps every record whole, on a release with planted exact duplicates, leaks, near-duplicate images, re-ordered and
foreign option lists and bad records."""

import json
import shutil

import pandas as pd
import pyarrow.parquet as pq
import pytest

from dataset_script.parquet_export import _row, build_hub_dataset, export_hub_layout
from dataset_script.records import StepCoTDataError
from dataset_script.release import StepCoTRelease


@pytest.fixture(scope="module")
def planted_release(tmp_path_factory):
    from dataset_script.synthetic import write_demo_release

    root = tmp_path_factory.mktemp("planted")
    write_demo_release(root, n=300, seed=3, image_size=32)
    records = json.loads((root / "data.json").read_text(encoding="utf-8"))
    split_of = {}
    for split, name in (("train", "train.xlsx"), ("validation", "val.xlsx"), ("test", "test.xlsx")):
        for path in pd.read_excel(root / name, dtype=str)["image_path"]:
            split_of[path] = split
        (root / name).unlink()
    in_split = {s: [r for r in records if split_of[r["image_path"]] == s] for s in ("train", "validation", "test")}
    train, validation, test = in_split["train"], in_split["validation"], in_split["test"]
    extra = [dict(records[0]), dict(records[5])]  # exact duplicates
    test[0]["patient_id"] = train[1]["patient_id"]  # leak: one patient in train and test
    validation[2]["patient_id"] = test[3]["patient_id"]
    for k in range(3):  # near-duplicate images under other patients in later splits
        copy = f"images/near-{k}.png"
        shutil.copy(root / train[10 + k]["image_path"], root / copy)
        extra.append(dict(train[10 + k], patient_id=f"near-{k}", image_path=copy))
        split_of[copy] = "test" if k else "validation"
    reordered = validation[4]["vqa_chain"][0]
    reordered["options"] = list(reversed(reordered["options"]))
    test[5]["vqa_chain"][1] = dict(test[5]["vqa_chain"][1], options=["W", "X", "Y", "Z"], answer="X")
    test[6]["vqa_chain"][2] = dict(test[6]["vqa_chain"][2], answer="Zebra")  # bad answer
    train[7].pop("patient_id")
    train[8]["image_path"] = "images/missing.png"
    split_of["images/missing.png"] = "train"
    unlisted = records.index(train[9])
    records = records + extra
    (root / "data.json").write_text(json.dumps(records, indent=1), encoding="utf-8")
    for split, name in (("train", "train.csv"), ("validation", "val.csv"), ("test", "test.csv")):
        paths = [r["image_path"] for i, r in enumerate(records)
                 if split_of[r["image_path"]] == split and i != unlisted]
        pd.DataFrame({"image_path": list(dict.fromkeys(paths))}).to_csv(root / name, index=False)
    return root


def _rows(folder):
    rows = {}
    for path in sorted((folder / "data").glob("*.parquet")):
        rows.setdefault(path.name.split("-")[0], []).extend(pq.read_table(path).to_pylist())
    return rows


def test_slim_build_equals_whole_records(planted_release, tmp_path):
    whole = StepCoTRelease(planted_release, strict=False)
    export_hub_layout(whole, tmp_path / "whole")
    summary = build_hub_dataset(planted_release, tmp_path / "slim", strict=False)

    slim = StepCoTRelease(planted_release, strict=False, keep_text=False)
    assert "report" not in slim.records[0] and "reasoning" not in slim.records[0]["vqa_chain"][0]
    assert slim.report == whole.report
    report = json.loads((tmp_path / "slim" / "validation_report.json").read_text(encoding="utf-8"))
    messages = " ".join(p["text"] for entry in report["skipped"] for p in entry["problems"])
    warnings = " ".join(w["text"] for w in report["warnings"])
    for planted in ("exact duplicate", "leakage", "near-duplicate", "differ from", "Zebra", "patient_id",
                    "not found", "listed in no split file"):
        assert planted in messages, planted
    assert "re-ordered" in warnings and len(report["near_duplicates"]) == 3

    expected = {split: [_row(r)[0] for r in records] for split, records in whole.splits.items()}
    assert _rows(tmp_path / "slim") == _rows(tmp_path / "whole") == expected
    assert summary["split_sizes"] == {split: len(rows) for split, rows in expected.items()}
    for name in ("README.md", "validation_report.json"):
        assert (tmp_path / "slim" / name).read_text() == (tmp_path / "whole" / name).read_text()
    assert sorted(p.name for p in (tmp_path / "slim" / "data").iterdir()) == \
        sorted(p.name for p in (tmp_path / "whole" / "data").iterdir())


def test_a_data_json_changed_between_the_passes_is_named(planted_release, tmp_path):
    root = tmp_path / "release"
    shutil.copytree(planted_release, root)
    release = StepCoTRelease(root, strict=False, keep_text=False)
    records = json.loads((root / "data.json").read_text(encoding="utf-8"))
    kept = release.records[len(release.records) // 2]["index"]
    records[kept]["patient_id"] = "someone-else"
    (root / "data.json").write_text(json.dumps(records), encoding="utf-8")
    with pytest.raises(StepCoTDataError, match=rf"data.json: record {kept} changed"):
        list(release.full_records())
