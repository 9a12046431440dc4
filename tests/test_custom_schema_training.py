"""A release with its own step schema (class folders -> one "Diagnosis" step with three options) trains with
`stepcot train`, and the exported models, `stepcot predict` and `stepcot eval` name the data's step and options."""

import json

import numpy as np
import pytest
from PIL import Image

from trainers.training.offline_encoders import offline_encoders_available

CLASSES = ("NORMAL", "BACTERIA", "VIRUS")


@pytest.fixture(scope="module")
def folder_release(tmp_path_factory):
    """Kermany-style class folders (40 px images, brightness by class) imported into a one-step release."""
    from dataset_script.importers import import_folders

    root = tmp_path_factory.mktemp("custom_schema")
    rng = np.random.default_rng(0)
    for label_index, label in enumerate(CLASSES):
        (root / "folders" / label).mkdir(parents=True)
        for patient in range(12):
            pixels = rng.integers(0, 80, (40, 40)) + 80 * label_index
            Image.fromarray(pixels.astype(np.uint8)).save(root / "folders" / label / f"person{patient}{label}_0.png")
    report = import_folders(root / "folders", root / "release")
    assert report["answers"] == {"Diagnosis": {label: 12 for label in CLASSES}}
    return root / "release"


def test_dataset_schema_takes_the_builds_step_names(folder_release, tmp_path):
    from datasets import load_dataset

    from dataset_script.parquet_export import build_hub_dataset, built_step_schema
    from trainers.training.run_data import dataset_schema

    build_hub_dataset(folder_release, tmp_path / "built")
    assert [step["name"] for step in built_step_schema(tmp_path / "built")] == ["Diagnosis"]
    train = load_dataset(str(tmp_path / "built"))["train"]
    schema = dataset_schema(train, ["Diagnosis"])
    assert schema["step_names"] == ["Diagnosis"] and sorted(schema["step_options"][0]) == sorted(CLASSES)
    assert dataset_schema(train)["step_names"] == ["Step 1"]  # a build that recorded no names: numbered steps


def test_chain_rules_do_not_apply_to_a_schema_of_other_steps():
    from modeling_stepcot.chain_stepcot import ChainChecker

    checker = ChainChecker(["Diagnosis"], [["Normal", "Bacterial pneumonia", "Viral pneumonia"]])
    assert checker.rules == [] and checker.skipped_rules  # every Step-CoT rule needs a step this schema lacks
    assert checker.violations([1]) == [] and checker.most_probable_consistent([[-1.0, -0.5, -2.0]])[0] == [1]


@pytest.mark.slow  # an end-to-end training run
@pytest.mark.skipif(not offline_encoders_available(), reason="offline encoder packages not installed")
def test_train_predict_and_eval_on_a_one_step_release(folder_release, tmp_path):
    from transformers import AutoModel

    import modeling_stepcot  # noqa: F401
    from trainers import cli
    from trainers.run_distill import main

    out = tmp_path / "run"
    assert main(["--dataset", str(folder_release), "--output_dir", str(out), "--image_size", "32",
                 "--teacher_hidden_size", "16", "--student_hidden_size", "16", "--relation_dim", "8",
                 "--num_train_epochs", "1", "--teacher_pretrain_epochs", "0", "--save_strategy", "no",
                 "--num_bootstrap", "0", "--disable_tqdm", "true"]) == 0
    for role in ("teacher", "student"):
        config = AutoModel.from_pretrained(out / role).config
        assert config.step_names == ["Diagnosis"] and config.num_steps == 1
        assert sorted(config.step_options[0]) == sorted(CLASSES)

    image = next((folder_release).rglob("*.png"))
    result = tmp_path / "predict.json"
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert cli.main(["predict", str(image), "--model", str(out / "student"), "--json"]) == 0
    result.write_text(buffer.getvalue())
    (answer,) = json.loads(result.read_text())
    steps = answer["steps"]
    assert len(steps) == 1 and steps[0]["name"] == "Diagnosis" and steps[0]["answer"] in CLASSES

    report = tmp_path / "eval"
    assert cli.main(["eval", "--model", str(out / "teacher"), "--dataset", str(out / "dataset"), "--split", "test",
                     "--out", str(report), "--num-bootstrap", "5"]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert len(metrics["steps"]) == 1 and sorted(metrics["steps"][0]["options"]) == sorted(CLASSES)
    assert metrics["steps"][0]["count"] == metrics["num_examples"] > 0


@pytest.mark.slow  # an end-to-end training run
@pytest.mark.skipif(not offline_encoders_available(), reason="offline encoder packages not installed")
def test_train_teacher_on_a_one_step_release(folder_release, tmp_path):
    from transformers import AutoModel

    import modeling_stepcot  # noqa: F401
    from trainers.run_teacher import main as train_teacher

    out = tmp_path / "teacher_run"
    assert train_teacher(["--dataset", str(folder_release), "--output_dir", str(out), "--image_size", "32",
                          "--teacher_hidden_size", "16", "--num_train_epochs", "1", "--save_strategy", "no",
                          "--num_bootstrap", "0", "--disable_tqdm", "true"]) == 0
    config = AutoModel.from_pretrained(out / "teacher").config
    assert config.step_names == ["Diagnosis"] and sorted(config.step_options[0]) == sorted(CLASSES)
