"""`stepcot train` end to end on the synthetic demo with the offline pretrained encoders: it learns every step,
exports loadable models with processor and model card, and two processes agree."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trainers.training.offline_encoders import offline_encoders_available

pytestmark = [  # every test here trains end to end: the `slow` tier (`pytest -m "not slow"` leaves them out)
    pytest.mark.slow,
    pytest.mark.skipif(not offline_encoders_available(), reason="offline encoder packages not installed"),
]

REPO_ROOT = Path(__file__).resolve().parents[1]

SMALL_RUN = [
    "--image_size", "128", "--teacher_hidden_size", "64", "--student_hidden_size", "64", "--relation_dim", "32",
    "--per_device_train_batch_size", "32", "--per_device_eval_batch_size", "64",
    "--teacher_learning_rate", "2e-3", "--student_learning_rate", "3e-3",
    "--save_strategy", "no", "--logging_steps", "50", "--disable_tqdm", "true", "--num_bootstrap", "50",
]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One short joint training run on 480 demo records at 128 px (shared by the tests below)."""
    from trainers.run_distill import main

    out = tmp_path_factory.mktemp("demo_run")
    args = ["--output_dir", str(out), "--demo_size", "480", "--demo_image_size", "128",
            "--num_train_epochs", "20", "--teacher_pretrain_epochs", "2", *SMALL_RUN]
    assert main(args) == 0
    return out


def test_short_run_learns_every_step_well_above_the_majority_rate(demo_run):
    from datasets import load_dataset

    results = json.loads((demo_run / "results.json").read_text())
    assert results["eval_split"] == "test"
    labels = np.asarray(load_dataset(str(demo_run / "dataset"), split="test")["labels"])
    for step in range(7):
        column = labels[:, step][labels[:, step] >= 0]
        majority = np.bincount(column).max() / len(column)
        for role in ("teacher", "student"):
            accuracy = results["results"][role][f"step{step + 1}_accuracy"]
            # every demo step is drawn into the image: require a clear margin over always-the-majority
            assert accuracy > majority + 0.5 * (1 - majority), (role, step + 1, accuracy, majority)


def test_run_exports_loadable_models_with_processor_metrics_and_card(demo_run, tmp_path):
    for role in ("teacher", "student"):
        folder = demo_run / role
        names = {p.name for p in folder.iterdir()}
        expected = {"config.json", "model.safetensors", "modeling_stepcot.py", "processor_config.json", "README.md"}
        assert expected <= names
        card = (folder / "README.md").read_text()
        assert card.startswith("---\n") and "pipeline_tag: visual-question-answering" in card
        assert "synthetic" in card.lower() and "Mean over steps" in card
        metrics = json.loads((demo_run / "metrics" / role / "metrics.json").read_text())
        assert metrics["confidence_interval"]["num_resamples"] == 50
        assert (demo_run / "metrics" / role / "confusion_matrices.png").stat().st_size > 1000
    assert not (demo_run / "best").exists() and not list(demo_run.glob("checkpoint-*"))  # a lean finished run
    # the exported student answers like the trained one, in a process without this package (remote code)
    script = (
        "import sys, torch; sys.modules['modeling_stepcot'] = None\n"
        "from transformers import AutoModel, AutoProcessor\n"
        "m = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()\n"
        "p = AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
        "from PIL import Image\n"
        "image = Image.open(sys.argv[2])\n"
        "print(m(pixel_values=p(images=image)['pixel_values']).logits.shape)\n"
    )
    image = next((demo_run / "demo-release" / "images").iterdir())
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), PYTHONPATH="")
    result = subprocess.run([sys.executable, "-c", script, str(demo_run / "student"), str(image)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "torch.Size([1, 7, 9])" in result.stdout
    # and the checkpoint carries the pipeline: one call gives the readable chain
    script = (
        "import sys; sys.modules['modeling_stepcot'] = None\n"
        "from transformers import pipeline\n"
        "vqa = pipeline(model=sys.argv[1], trust_remote_code=True)\n"
        "print(vqa(sys.argv[2])['chain'])\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(demo_run / "teacher"), str(image)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1].startswith("Detection: ")


@pytest.mark.usefixtures("one_multiprocess_launch_at_a_time")
def test_two_processes_train_and_agree_on_metrics(tmp_path):
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
        str(REPO_ROOT / "trainers" / "run_distill.py"), "--output_dir", str(out), "--demo_size", "120",
        "--demo_image_size", "64", "--num_train_epochs", "1", "--teacher_pretrain_epochs", "1", *SMALL_RUN,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    reports = sorted(line for line in result.stdout.splitlines() if line.startswith("[rank "))
    assert [line.split("]")[0] for line in reports] == ["[rank 0 of 2", "[rank 1 of 2"]
    assert reports[0].split("]")[1] == reports[1].split("]")[1]  # identical metrics on both ranks
    assert (out / "student" / "model.safetensors").is_file() and (out / "results.json").is_file()


def test_teacher_stage_then_distillation_from_the_saved_teacher(tmp_path):
    from safetensors.torch import load_file

    from trainers.run_distill import main as train
    from trainers.run_teacher import main as train_teacher

    common = [a for a in SMALL_RUN if a not in ("--teacher_learning_rate", "2e-3", "--student_learning_rate", "3e-3")]
    stage = ["--demo_size", "120", "--demo_image_size", "64", "--num_train_epochs", "1", *common]
    relation = stage.index("--relation_dim")  # a distillation setting: the teacher-only stage has no CH projections
    teacher_stage = stage[:relation] + stage[relation + 2:]
    assert train_teacher(["--output_dir", str(tmp_path / "teacher_stage"), "--learning_rate", "2e-3",
                          *teacher_stage]) == 0
    teacher_dir = tmp_path / "teacher_stage" / "teacher"
    results = json.loads((tmp_path / "teacher_stage" / "results.json").read_text())
    assert set(results["results"]) == {"teacher", "calibration"} and "mean_accuracy" in results["results"]["teacher"]
    assert results["results"]["calibration"]["teacher"]["fitted_on"] == "validation"
    assert (tmp_path / "teacher_stage" / "metrics" / "teacher" / "metrics.md").is_file()

    joint = tmp_path / "joint"
    assert train(["--output_dir", str(joint), "--teacher_model", str(teacher_dir), "--teacher_pretrain_epochs", "0",
                  "--teacher_learning_rate", "0", *stage]) == 0
    # with a zero teacher learning rate the exported teacher is exactly the stage-1 teacher
    before, after = load_file(teacher_dir / "model.safetensors"), load_file(joint / "teacher" / "model.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_lora_run_trains_on_images_and_exports_merged_models(tiny_clip_dir, tmp_path):
    """With LoRA on a CLIP backbone (a local checkpoint standing in for a Hub id) the encoders train, so the run
    goes through images and the collator instead of the feature cache, and the export is a plain model."""
    from safetensors.torch import load_file

    from trainers.run_distill import main

    out = tmp_path / "lora"
    args = ["--output_dir", str(out), "--vision_encoder", str(tiny_clip_dir), "--lora_r", "2",
            "--demo_size", "60", "--demo_image_size", "32", "--num_train_epochs", "1",
            "--teacher_pretrain_epochs", "0",
            *[a for a in SMALL_RUN if a not in ("--image_size", "128")]]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["run_args"]["feature_cache"] is False
    assert not (out / "cache").exists()
    weights = load_file(out / "student" / "model.safetensors")
    assert not any("lora_" in key or "base_layer" in key for key in weights)
    original = load_file(tiny_clip_dir / "model.safetensors")
    key = "vision_model.encoder.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(weights[f"vision_encoder.model.{key}"], original[key])  # adapters merged in
    key = "vision_model.encoder.layers.0.self_attn.k_proj.weight"
    assert torch.equal(weights[f"vision_encoder.model.{key}"], original[key])  # no adapter: untouched
