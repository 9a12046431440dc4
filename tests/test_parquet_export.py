"""Demo generator, Hub-layout export, `load_dataset` round trip, push, and the `stepcot data` CLI."""

import io
import json
import re
import shutil
from collections import Counter

import numpy as np
import pytest
from datasets import Image as ImageFeature
from datasets import load_dataset
from PIL import Image

from dataset_script.parquet_export import FEATURES, build_hub_dataset, push_to_hub
from dataset_script.release import StepCoTRelease
from dataset_script.synthetic import (
    DIAGNOSIS_PRIOR,
    diagnosis_from_findings,
    lesion_sites,
    make_demo_example,
    render_image,
    sample_findings,
)
from modeling_stepcot.configuration_stepcot import DEFAULT_STEP_OPTIONS
from trainers import cli


def test_findings_imply_their_diagnosis_and_cover_every_option():
    seen = [set() for _ in DEFAULT_STEP_OPTIONS]
    for diagnosis in DIAGNOSIS_PRIOR:
        for seed in range(60):
            answers = sample_findings(diagnosis, np.random.default_rng(seed))
            assert diagnosis_from_findings(answers) == diagnosis
            for step, answer in enumerate(answers + [diagnosis]):
                assert answer in DEFAULT_STEP_OPTIONS[step]
                seen[step].add(answer)
    assert [sorted(s) for s in seen] == [sorted(o) for o in DEFAULT_STEP_OPTIONS]


def test_images_are_drawn_from_the_answers():
    """Same anatomy (same seed), different findings: the lesion changes the image where the answers say."""
    def render(diagnosis):
        rng = np.random.default_rng(7)
        answers = sample_findings(diagnosis, np.random.default_rng(1)) + [diagnosis]
        return render_image(answers, lesion_sites(answers, np.random.default_rng(2)), 128, rng).astype(float)

    normal, pneumothorax, cardiomegaly = render("Normal"), render("Pneumothorax"), render("Cardiomegaly")
    assert (pneumothorax - normal).mean() < -2  # air without lung markings is darker
    assert (cardiomegaly - normal).mean() > 2  # the larger heart is brighter
    assert np.abs(render("Normal") - normal).max() == 0  # deterministic


def test_demo_is_learnable_by_a_linear_model():
    """Pixels of the small demo images already separate the diagnoses well above the majority rate."""
    from sklearn.linear_model import LogisticRegression

    names = list(DIAGNOSIS_PRIOR)
    rng = np.random.default_rng(0)
    diagnoses = rng.choice(len(names), size=400, p=list(DIAGNOSIS_PRIOR.values()))
    features = []
    for index, d in enumerate(diagnoses):
        _, image = make_demo_example(index, 0, 64, "p", names[d])
        features.append(np.asarray(Image.fromarray(image).resize((24, 24), Image.BILINEAR), dtype=np.float32))
    features = np.stack(features).reshape(len(diagnoses), -1)
    features = (features - features.mean(0)) / (features.std(0) + 1e-3)
    model = LogisticRegression(max_iter=200, C=0.05).fit(features[:300], diagnoses[:300])
    accuracy = (model.predict(features[300:]) == diagnoses[300:]).mean()
    majority = Counter(diagnoses[300:]).most_common(1)[0][1] / 100
    assert accuracy > majority + 0.2, (accuracy, majority)


def test_demo_release_layout(demo_release_dir):
    records = json.loads((demo_release_dir / "data.json").read_text())
    assert len(records) == 60
    assert {r["image_path"].split("/")[0] for r in records} == {"images", "images_2"}
    for name in ("train.xlsx", "val.xlsx", "test.xlsx", "README.md"):
        assert (demo_release_dir / name).is_file()
    assert "SYNTHETIC" in (demo_release_dir / "README.md").read_text()
    assert Image.open(demo_release_dir / records[0]["image_path"]).size == (64, 64)


def test_build_then_load_dataset_round_trip(demo_release_dir, tmp_path):
    out = tmp_path / "hub"
    summary = build_hub_dataset(demo_release_dir, out)
    release = StepCoTRelease(demo_release_dir)
    names = sorted(p.name for p in (out / "data").iterdir())  # shard names end in their content digest
    assert [re.sub(r"-[0-9a-f]{16}\.parquet$", ".parquet", name) for name in names] == [
        f"{split}-00000-of-00001.parquet" for split in ("test", "train", "validation")]
    dataset = load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    assert set(dataset) == {"train", "validation", "test"}
    for split, rows in dataset.items():
        assert rows.features == FEATURES
        assert len(rows) == summary["split_sizes"][split] == len(release.split(split))
        expected = {(r["patient_id"], tuple(r["labels"])) for r in release.split(split)}
        assert {(pid, tuple(labels)) for pid, labels in zip(rows["patient_id"], rows["labels"])} == expected
    example = dataset["train"][0]
    assert example["image"].size == (64, 64) and example["image"].mode == "L"
    assert len(example["vqa_chain"]) == 7 and set(example["vqa_chain"][0]) == {"question", "options", "answer",
                                                                                 "reasoning"}
    card = (out / "README.md").read_text()
    for text in ("configs:", "dataset_info:", f"- data/{names[1]}", "SYNTHETIC DATA", "## Licenses",
                 "| Normal |", "Lesion distribution"):
        assert text in card


def test_build_shards_and_converts_16_bit_images(demo_release_dir, tmp_path):
    release_dir = tmp_path / "release"
    shutil.copytree(demo_release_dir, release_dir)
    first = json.loads((release_dir / "data.json").read_text())[0]
    sixteen_bit = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(sixteen_bit).save(release_dir / first["image_path"])
    out = tmp_path / "hub"
    build_hub_dataset(release_dir, out, max_shard_bytes=20_000)
    shards = sorted(p.name for p in (out / "data").glob("train-*.parquet"))
    assert len(shards) > 1 and all(re.fullmatch(rf"train-\d{{5}}-of-{len(shards):05d}-[0-9a-f]{{16}}\.parquet", name)
                                   for name in shards)
    dataset = load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    undecoded = [split.cast_column("image", ImageFeature(decode=False)) for split in dataset.values()]
    stored = [row["image"] for split in undecoded for row in split
              if row["image"]["path"] == first["image_path"].split("/")[-1]]
    assert len(stored) == 1
    image = Image.open(io.BytesIO(stored[0]["bytes"]))
    assert image.mode == "L" and np.asarray(image).max() == 255 and np.asarray(image).min() == 0


class _RecordingApi:
    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        return "commit-url"


def test_push_uploads_card_and_shards_to_a_private_dataset_repo(demo_release_dir, tmp_path):
    out = tmp_path / "hub"
    build_hub_dataset(demo_release_dir, out)
    api = _RecordingApi()
    assert push_to_hub(out, "fl-15o/Step-CoT", api=api) == "commit-url"
    (_, repo, create), (_, _, upload) = api.calls
    assert repo == "fl-15o/Step-CoT" and create == {"repo_type": "dataset", "private": True, "exist_ok": True}
    assert upload["repo_type"] == "dataset" and upload["folder_path"] == str(out)
    assert upload["allow_patterns"] == ["README.md", "data/*.parquet"]  # the validation report stays local
    with pytest.raises(FileNotFoundError, match="not a built dataset"):
        push_to_hub(tmp_path, api=api)


def test_cli_demo_validate_build(tmp_path, capsys):
    release, out = tmp_path / "release", tmp_path / "hub"
    assert cli.main(["data", "demo", "--out", str(release), "--n", "12", "--image-size", "32"]) == 0
    assert cli.main(["data", "validate", "--source", str(release)]) == 0
    assert cli.main(["data", "build", "--source", str(release), "--out", str(out)]) == 0
    assert (out / "README.md").is_file()
    records = json.loads((release / "data.json").read_text())
    records[2]["vqa_chain"][0]["answer"] = "Z"
    (release / "data.json").write_text(json.dumps(records))
    capsys.readouterr()
    assert cli.main(["data", "build", "--source", str(release), "--out", str(out)]) == 1
    assert "record 2" in capsys.readouterr().err
    assert cli.main(["data", "validate", "--source", str(release)]) == 1
    assert cli.main(["data", "build", "--source", str(release), "--out", str(out), "--lenient"]) == 0
    report = json.loads((out / "validation_report.json").read_text())
    assert [entry["index"] for entry in report["skipped"]] == [2]
