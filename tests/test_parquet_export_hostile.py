"""Hostile builds and the one source resolver: image bytes always embedded, no
stale `load_dataset` cache after a rebuild, atomic rebuilds, no build into the release, one policy for train, eval
and the ablation bench."""

import json
import shutil

import pyarrow.parquet as pq
import pytest
from datasets import load_dataset

from dataset_script import parquet_export
from dataset_script.parquet_export import BuildOutputError, build_hub_dataset
from dataset_script.records import StepCoTDataError
from dataset_script.sources import load_source, prepare_source, source_kind
from trainers import cli


def _swap_first_step(folder):
    """Give every record the other step-1 answer (options 0 <-> 1): the labels change, nothing else does."""
    records = json.loads((folder / "data.json").read_text())
    for record in records:
        step = record["vqa_chain"][0]
        options = step["options"]
        step["answer"] = options[1] if step["answer"] == options[0] else options[0]
    (folder / "data.json").write_text(json.dumps(records, indent=1))


def _swap_labels_within_train(folder):
    """Swap the chains (so the labels) of two train records with different labels: each split keeps its size and
    its bytes, so the second build's card metadata (the YAML that `load_dataset` reads) equals the first's."""
    import pandas as pd

    records = json.loads((folder / "data.json").read_text())
    train = set(pd.read_excel(folder / "train.xlsx", dtype=str)["image_path"])
    first, second = next((a, b) for a in range(len(records)) for b in range(a + 1, len(records))
                         if {records[a]["image_path"], records[b]["image_path"]} <= train
                         and records[a]["vqa_chain"][0]["answer"] != records[b]["vqa_chain"][0]["answer"])
    chains = records[first]["vqa_chain"], records[second]["vqa_chain"]
    records[second]["vqa_chain"], records[first]["vqa_chain"] = chains
    (folder / "data.json").write_text(json.dumps(records, indent=1))


def _parquet_labels(out, split="train"):
    rows = []
    for path in sorted((out / "data").glob(f"{split}-*.parquet")):
        rows += pq.read_table(path).column("labels").to_pylist()
    return rows


# -- #3: image bytes are always embedded ---------------------------------------------------------------------------


def test_build_from_inside_the_image_folder_embeds_every_image(release, tmp_path, monkeypatch):
    out = tmp_path / "built"
    monkeypatch.chdir(release / "images")  # every image's base name exists in the current folder
    build_hub_dataset(release, out)
    monkeypatch.chdir(tmp_path)
    for path in (out / "data").glob("*.parquet"):
        images = pq.read_table(path).column("image").to_pylist()
        assert images and all(image["bytes"] for image in images), path.name
    moved = tmp_path / "elsewhere" / "built"
    shutil.copytree(out, moved)
    shutil.rmtree(release)  # the built folder must not need the release any more
    train = load_dataset(str(moved), split="train", cache_dir=str(tmp_path / "cache"))
    assert train[0]["image"].size == (32, 32)


# -- #4: a rebuild is never served from the cache of an earlier build --------------------------------------------


def test_rebuild_with_swapped_labels_loads_the_new_labels(release, tmp_path):
    out, cache = tmp_path / "built", str(tmp_path / "cache")
    build_hub_dataset(release, out)
    card = (out / "README.md").read_text()
    before = load_dataset(str(out), split="train", cache_dir=cache)["labels"]
    _swap_labels_within_train(release)
    build_hub_dataset(release, out)
    assert _strip_file_lists(out / "README.md") == _strip_file_lists(card)  # equal card metadata
    after = load_dataset(str(out), split="train", cache_dir=cache)["labels"]
    assert after == _parquet_labels(out) != before
    assert load_source(str(out), split="train")["labels"] == after  # the resolver reads the same


def _strip_file_lists(card):
    text = card if isinstance(card, str) else card.read_text()
    text = text.split("\n---\n", 1)[0]  # the YAML header
    return [line for line in text.splitlines() if ".parquet" not in line]


# -- #7: atomic rebuilds; never build into the release ---------------------------------------------------------


def test_failed_rebuild_leaves_the_previous_build_intact(release, tmp_path, monkeypatch):
    out, cache = tmp_path / "built", str(tmp_path / "cache")
    build_hub_dataset(release, out)
    shards_before = sorted(p.name for p in (out / "data").iterdir())
    labels_before = load_dataset(str(out), split="train", cache_dir=cache)["labels"]
    card_before = (out / "README.md").read_text()
    _swap_first_step(release)
    calls = {"n": 0}
    real_row = parquet_export._row

    def failing_row(record):  # the process dies half-way through the new shards
        calls["n"] += 1
        if calls["n"] > 10:
            raise KeyboardInterrupt
        return real_row(record)

    monkeypatch.setattr(parquet_export, "_row", failing_row)
    with pytest.raises(KeyboardInterrupt):
        build_hub_dataset(release, out)
    assert sorted(p.name for p in (out / "data").iterdir()) == shards_before
    assert (out / "README.md").read_text() == card_before
    assert not [p for p in out.iterdir() if p.name.startswith(parquet_export.STAGING_PREFIX)]
    assert load_dataset(str(out), split="train", cache_dir=cache)["labels"] == labels_before


@pytest.mark.parametrize("where", ["same", "inside", "around"])
def test_build_refuses_an_output_folder_that_is_or_nests_with_the_release(release, where, capsys):
    readme = (release / "README.md").read_text()
    out = {"same": release, "inside": release / "built", "around": release.parent}[where]
    with pytest.raises(BuildOutputError, match="output folder"):
        build_hub_dataset(release, out)
    assert cli.main(["data", "build", "--source", str(release), "--out", str(out)]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "output folder" in error
    assert (release / "README.md").read_text() == readme and not (release / "data").exists()


def test_leftovers_of_a_killed_build_are_cleared(release, tmp_path):
    out = tmp_path / "built"
    build_hub_dataset(release, out)
    leftover = out / f"{parquet_export.STAGING_PREFIX}killed"
    (leftover / "data").mkdir(parents=True)
    build_hub_dataset(release, out)
    assert not leftover.exists()


# -- the one source resolver ----------------------------------------------------------------------------------------


def test_source_kinds(release, tmp_path):
    build_hub_dataset(release, tmp_path / "built")
    (tmp_path / "empty").mkdir()
    assert source_kind("demo") == "demo"
    assert source_kind(str(release)) == "release"
    assert source_kind(str(tmp_path / "built")) == "built"
    assert source_kind("fl-15o/Step-CoT") == "hub"
    with pytest.raises(StepCoTDataError, match="neither a Step-CoT release folder"):
        source_kind(str(tmp_path / "empty"))
    with pytest.raises(StepCoTDataError, match="dataset folder not found"):
        source_kind(str(tmp_path / "missing"))


def test_release_is_rebuilt_exactly_when_it_changes(release, tmp_path):
    work, messages = tmp_path / "run", []
    first = load_source(str(release), work, split="train", log=messages.append)
    assert (work / "dataset" / "build_info.json").is_file() and messages[-1].startswith("built")
    again = load_source(str(release), work, split="train", log=messages.append)
    assert messages[-1].startswith("reusing") and again["labels"] == first["labels"]
    _swap_first_step(release)
    changed = load_source(str(release), work, split="train", log=messages.append)
    assert messages[-1].startswith("built") and changed["labels"] == _parquet_labels(work / "dataset")
    assert changed["labels"] != first["labels"]
    lenient = load_source(str(release), work, split="train", lenient=True, log=messages.append)
    assert messages[-1].startswith("built") and lenient["labels"] == changed["labels"]  # other settings: rebuilt


def test_training_reads_the_release_as_it_is_now(release, tmp_path):
    """`stepcot train --dataset RELEASE` rebuilds OUTPUT_DIR/dataset when the release changes."""
    from trainers.training.run_arguments import DataArguments
    from trainers.training.run_data import load_splits

    output_dir = tmp_path / "run"
    first = load_splits(DataArguments(dataset=str(release)), output_dir)["train"]["labels"]
    _swap_first_step(release)
    second = load_splits(DataArguments(dataset=str(release)), output_dir)["train"]["labels"]
    assert second != first and second == _parquet_labels(output_dir / "dataset")


def test_eval_and_bench_resolve_sources_like_training(release, tmp_path, monkeypatch):
    from trainers.evaluation.evaluate_model import load_split

    monkeypatch.setenv("STEPCOT_CACHE", str(tmp_path / "stepcot-cache"))
    data, split = load_split(str(release), "val")  # a release folder is validated and built, as for training
    assert split == "validation" and len(data) > 0
    assert list((tmp_path / "stepcot-cache" / "builds").iterdir())
    built = prepare_source(str(release), tmp_path / "bench" / "data", log=lambda message: None)
    assert built == str(tmp_path / "bench" / "data" / "dataset")
    assert prepare_source(built) == built  # a built folder is read as it is
    with pytest.raises(StepCoTDataError, match="dataset folder not found"):
        load_split(str(tmp_path / "nope"), "test")


def test_demo_is_rendered_again_when_its_settings_change(tmp_path):
    work, messages = tmp_path / "run", []
    small = load_source("demo", work, split="train", demo_size=12, demo_image_size=32, log=messages.append)
    assert any(m.startswith("rendered 12") for m in messages)
    larger = load_source("demo", work, demo_size=20, demo_image_size=32, log=messages.append)
    assert any(m.startswith("rendered 20") for m in messages)
    assert sum(len(split) for split in larger.values()) == 20 and len(small) < 20


def test_folder_built_before_content_named_shards_is_never_served_stale(release, tmp_path):
    out = tmp_path / "built"

    def build_with_old_names():  # the layout of builds made before content-named shards
        build_hub_dataset(release, out)
        card = (out / "README.md").read_text()
        for path in (out / "data").glob("*.parquet"):
            legacy = path.name.rsplit("-", 1)[0] + ".parquet"
            path.rename(path.with_name(legacy))
            card = card.replace(f"    path:\n    - data/{path.name}", f"    path: data/{legacy.split('-')[0]}-*")
        (out / "README.md").write_text(card)

    build_with_old_names()
    before = load_source(str(out), split="train")["labels"]
    _swap_labels_within_train(release)
    build_with_old_names()
    assert load_source(str(out), split="train")["labels"] == _parquet_labels(out) != before
