"""Data fidelity: a release's own questions and options reach the model (and agree with `stepcot eval`), no
silent fallback to validation for the final evaluation, and the hard synthetic demo."""

import json
import shutil
from types import SimpleNamespace

import pytest

from trainers.training.offline_encoders import offline_encoders_available

STEP3_OPTIONS = ["Airspace consolidation", "Reticular", "Nodule(s)", "Cavitation", "Collapse", "N/A"]
STEP3_QUESTION = "Which radiographic pattern does the lesion show?"


@pytest.fixture(scope="module")
def renamed_release(demo_release_dir, tmp_path_factory):
    """The demo release with other step-3 option texts and question (same 6 classes, answers renamed alike)."""
    from modeling_stepcot.configuration_stepcot import DEFAULT_STEP_OPTIONS

    folder = tmp_path_factory.mktemp("renamed") / "release"
    shutil.copytree(demo_release_dir, folder)
    rename = dict(zip(DEFAULT_STEP_OPTIONS[2], STEP3_OPTIONS))
    records = json.loads((folder / "data.json").read_text())
    for record in records:
        step = record["vqa_chain"][2]
        step["options"], step["answer"], step["question"] = STEP3_OPTIONS, rename[step["answer"]], STEP3_QUESTION
    (folder / "data.json").write_text(json.dumps(records))
    return folder


def test_dataset_schema_reads_the_releases_questions_and_options(renamed_release, tmp_path):
    from datasets import load_dataset

    from dataset_script.parquet_export import build_hub_dataset
    from modeling_stepcot.configuration_stepcot import DEFAULT_STEP_OPTIONS
    from trainers.training.run_data import dataset_schema
    from trainers.training.run_models import _adopt_schema

    build_hub_dataset(renamed_release, tmp_path / "built")
    schema = dataset_schema(load_dataset(str(tmp_path / "built"))["train"])
    assert schema["step_options"][2] == STEP3_OPTIONS and schema["step_questions"][2] == STEP3_QUESTION
    assert schema["step_options"][3] == DEFAULT_STEP_OPTIONS[3]
    from tiny_models import tiny_student

    student = tiny_student()
    _adopt_schema(student, schema, "saved student")  # same class counts: takes the release's names
    assert student.config.step_options[2] == STEP3_OPTIONS
    fewer = dict(schema, step_options=[*schema["step_options"][:2], STEP3_OPTIONS[:5], *schema["step_options"][3:]])
    with pytest.raises(ValueError, match="classes per step"):
        _adopt_schema(tiny_student(), fewer, "saved student")


@pytest.mark.slow
@pytest.mark.skipif(not offline_encoders_available(), reason="offline encoder packages not installed")
def test_train_on_a_release_names_answers_as_the_release_does(renamed_release, tmp_path):
    """`stepcot train` on the release: the exported models ask the release's question and name its options, so the
    pipeline's answer names and `stepcot eval`'s agree with the release (before: the package's defaults)."""
    from transformers import AutoModel

    import modeling_stepcot  # noqa: F401
    from trainers.evaluation.evaluate_model import dataset_step_options, load_split
    from trainers.run_distill import main

    out = tmp_path / "run"
    assert main(["--dataset", str(renamed_release), "--output_dir", str(out), "--image_size", "64",
                 "--teacher_hidden_size", "32", "--student_hidden_size", "16", "--relation_dim", "16",
                 "--num_train_epochs", "1", "--teacher_pretrain_epochs", "0", "--save_strategy", "no",
                 "--num_bootstrap", "0", "--disable_tqdm", "true"]) == 0
    data, _ = load_split(str(out / "dataset"), "test")
    for role in ("teacher", "student"):
        config = AutoModel.from_pretrained(out / role).config
        assert config.step_options[2] == STEP3_OPTIONS
        eval_names, notes = dataset_step_options(data, config)
        assert eval_names == config.step_options and not any("differ" in note for note in notes)
    assert AutoModel.from_pretrained(out / "teacher").config.step_questions[2] == STEP3_QUESTION


def test_no_test_split_fails_unless_validation_is_asked_for(hub_dataset, tmp_path):
    from datasets import load_dataset

    from trainers.training import run_data

    without_test = load_dataset(str(hub_dataset))
    del without_test["test"]
    training_args = SimpleNamespace(main_process_first=lambda desc: __import__("contextlib").nullcontext())
    original = run_data.load_splits
    run_data.load_splits = lambda data_args, output_dir: without_test
    try:
        data_args = SimpleNamespace(dataset="no-test", eval_split="test", max_train_samples=None)
        with pytest.raises(ValueError, match="no 'test' split.*--eval_split validation"):
            run_data.prepare_splits(data_args, training_args, tmp_path)
        data_args.eval_split = "validation"
        assert run_data.prepare_splits(data_args, training_args, tmp_path)[1] == "validation"
    finally:
        run_data.load_splits = original


def test_hard_demo_is_subtler_noisier_and_leaves_the_easy_one_alone():
    from dataset_script.synthetic import DIFFICULTIES, diagnosis_from_findings, make_demo_example

    noisy = 0
    for index in range(200):
        record, _ = make_demo_example(index, 0, 32, "p", "Normal", difficulty="hard")
        answers = [step["answer"] for step in record["vqa_chain"]]
        noisy += answers[-1] != "Normal"  # the image shows a normal chest: a different chain is label noise
        assert diagnosis_from_findings(answers[:6]) == answers[-1]  # noisy chains are still self-consistent
    assert 2 <= noisy <= 18  # 4 % of 200, give or take
    easy, hard = DIFFICULTIES["easy"], DIFFICULTIES["hard"]
    assert hard["lesion_contrast"] < easy["lesion_contrast"] and hard["heart_occlusion"] > easy["heart_occlusion"]
    assert hard["noise"] > easy["noise"] and easy["label_noise"] == 0
    record, _ = make_demo_example(3, 0, 32, "p", "Normal")
    assert record["vqa_chain"][-1]["answer"] == "Normal"  # the easy demo has no label noise
    with pytest.raises(ValueError, match="difficulty"):
        make_demo_example(0, 0, 32, "p", "Normal", difficulty="extreme")
