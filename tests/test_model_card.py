"""Model cards: rendered from a tiny model's config and fake metrics, the YAML parses back to Hub-valid metadata and
the body carries the schema, the metrics and a usage example that matches the checkpoint."""

import json

import pytest
import yaml
from huggingface_hub import ModelCard
from tiny_models import tiny_student, tiny_teacher

from trainers.inference.predict import add_pipeline_to_checkpoint
from trainers.model_export.card_metadata import metadata_problems
from trainers.model_export.model_card import render_model_card, write_model_card

FAKE_METRICS = {"mean_accuracy": 0.8125, "mean_auc": 0.9031}
FAKE_TABLE = "| Model | Accuracy |\n|---|---|\n| Teacher | 81.3 |"


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


@pytest.mark.parametrize("role,factory", [("teacher", tiny_teacher), ("student", tiny_student)])
def test_card_renders_with_valid_hub_metadata(role, factory):
    config = factory().config
    config.vision_encoder_name_or_path = "openai/clip-vit-base-patch32"
    run_args = {"data": {"dataset": "fl-15o/Step-CoT"}, "training": {"num_train_epochs": 42}}
    text = render_model_card(role, config, run_args=run_args, metrics=FAKE_METRICS, table=FAKE_TABLE,
                             repo_id="lab/stepcot-" + role)
    metadata = _front_matter(text)
    assert ModelCard(text).data.to_dict() == metadata  # huggingface_hub reads the same YAML back
    assert metadata_problems(metadata) == []
    assert metadata["license"] == "other" and metadata["license_name"] == "research-only"
    assert metadata["pipeline_tag"] == "visual-question-answering" and metadata["library_name"] == "transformers"
    assert metadata["datasets"] == ["fl-15o/Step-CoT"]
    assert metadata["base_model"] == ["openai/clip-vit-base-patch32"]
    assert role in metadata["tags"] and "synthetic-data" not in metadata["tags"]
    body = text.split("---\n", 2)[2]
    assert f"# Step-CoT {role} trained on fl-15o/Step-CoT" in body
    assert "accuracy 0.812, AUC 0.903" in body and FAKE_TABLE in body
    assert "| 1 | Detection | Is there any abnormal radiodensity in the lungs? |" in body
    assert "`num_train_epochs=42`" in body
    assert 'pipeline("stepcot-vqa", model="lab/stepcot-' + role in body  # without shipped pipeline code
    assert "{{" not in body and "{%" not in body


def test_synthetic_demo_card_and_shipped_pipeline(tmp_path):
    model = tiny_student()
    model.save_pretrained(tmp_path)
    add_pipeline_to_checkpoint(tmp_path)
    path = write_model_card(tmp_path, "student", model.config, run_args={"data": {"dataset": "demo"}})
    text = path.read_text(encoding="utf-8")
    metadata = _front_matter(text)
    assert metadata_problems(metadata) == []
    assert "synthetic-data" in metadata["tags"] and "datasets" not in metadata
    assert "carry no medical knowledge" in text
    assert 'pipeline(model="<user>/stepcot-student", trust_remote_code=True)' in text
    assert json.loads((tmp_path / "config.json").read_text())["custom_pipelines"]


def test_metadata_checks_catch_what_the_hub_rejects():
    good = {"license": "other", "license_name": "research-only", "pipeline_tag": "visual-question-answering",
            "datasets": ["fl-15o/Step-CoT"], "base_model": ["openai/clip-vit-base-patch32"],
            "tags": ["medical", "chest-x-ray"], "metrics": ["accuracy", "roc_auc"]}
    assert metadata_problems(good) == []
    bad = dict(good, license="research", pipeline_tag="vqa", base_model=["/home/me/clip", "efficientnet_lite0"],
               datasets="not a list/ok", tags=["chest x-ray"])
    problems = "\n".join(metadata_problems(bad))
    for expected in ("license: 'research'", "pipeline_tag: 'vqa'", "base_model: '/home/me/clip'",
                     "base_model: 'efficientnet_lite0'", "datasets: 'not a list/ok'", "tags: 'chest x-ray'"):
        assert expected in problems
    assert "license_name" in "\n".join(metadata_problems(dict(good, license_name="Research Only")))
    assert metadata_problems({}) == ["license: missing"]


def test_local_dataset_folder_is_not_listed_as_a_hub_dataset(tmp_path):
    run_args = {"data": {"dataset": str(tmp_path)}}  # e.g. a built dataset folder on disk
    metadata = _front_matter(render_model_card("student", tiny_student().config, run_args=run_args))
    assert metadata["datasets"] == ["fl-15o/Step-CoT"] and metadata_problems(metadata) == []
