"""Exported Step-CoT model folders, tried where their users are: a fresh virtualenv holding only torch,
transformers, safetensors and pillow (no stepcot, no efficientnet package), offline. AutoModel, AutoProcessor and
`pipeline(..., trust_remote_code=True)` answer, and so does the user's own re-save of the model."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.cleanroom import assert_project_absent, clean_venv, run_clean
from tests.tiny_models import tiny_student, tiny_teacher, tiny_tokenizer

pytestmark = pytest.mark.slow

# What the README's "What each artifact needs" table promises for a model folder.
MODEL_FOLDER_REQUIREMENTS = ["torch==2.13.0", "transformers==5.24.0", "safetensors==0.8.0", "pillow==12.3.0"]
IMAGE_SIZE = 64

USER_CODE = r"""
import json, sys
import numpy as np
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor, pipeline

folder, resaved = sys.argv[1], sys.argv[2]
image = Image.open(sys.argv[3])
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
with torch.no_grad():
    logits = model(**processor(images=image)).logits
answers = [step["answer"] for step in pipeline(model=folder, trust_remote_code=True)(image)["steps"]]

model.save_pretrained(resaved)  # the user's own copy of the model
again = AutoModel.from_pretrained(resaved, trust_remote_code=True).eval()
with torch.no_grad():
    logits_again = again(**AutoProcessor.from_pretrained(resaved, trust_remote_code=True)(images=image)).logits
answers_again = [step["answer"] for step in pipeline(model=resaved, trust_remote_code=True)(image)["steps"]]
print(json.dumps({"class": type(model).__name__, "module": type(model).__module__,
                  "trainable": model.num_parameters(only_trainable=True),
                  "logits": logits.tolist(), "logits_again": logits_again.tolist(),
                  "answers": answers, "answers_again": answers_again}))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny student and teacher with the default offline backbone (EfficientNet-Lite0), exported as stepcot
    exports a trained pair: weights + code, processor, pipeline, model card."""
    from modeling_stepcot import StepCoTProcessor
    from trainers.model_export.export import export

    tokenizer = tiny_tokenizer()
    # standardised image embeddings, as the real-data recipe trains them (buffers + the statistics' code)
    models = {
        "student": tiny_student(vision_backbone="efficientnet_lite0", image_size=IMAGE_SIZE,
                                standardize_image_embeds=True),
        "teacher": tiny_teacher(vision_backbone="efficientnet_lite0", image_size=IMAGE_SIZE,
                                standardize_image_embeds=True),
    }
    for model in models.values():
        width = model.vision_encoder.output_dim
        model.set_image_embed_standardization(torch.rand(16, width, generator=torch.Generator().manual_seed(0)))
    models["teacher"].set_question_tokens(tokenizer)
    processor = StepCoTProcessor.from_model_config(models["teacher"].config, tokenizer,)
    folder = tmp_path_factory.mktemp("exported")
    export({role: model.eval() for role, model in models.items()}, processor, folder, results={},
           run_args={"model": {}}, table="")
    image = folder / "xray.png"
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (80, 96), dtype=np.uint8)).save(image)
    expected = {}
    for role, model in models.items():
        with torch.no_grad():
            logits = model(**processor(images=Image.open(image))).logits
        heads = sum(p.numel() for name, p in model.named_parameters() if not name.split(".")[0].endswith("_encoder"))
        expected[role] = {"logits": logits, "trainable": heads}
    return folder, image, expected


@pytest.fixture(scope="module")
def model_venv():
    return clean_venv(MODEL_FOLDER_REQUIREMENTS)


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_exported_folder_and_its_resave_answer_in_a_clean_venv(exported, model_venv, role, tmp_path):
    folder, image, expected = exported
    assert_project_absent(model_venv, tmp_path)
    result = run_clean(model_venv, USER_CODE, cwd=tmp_path / "user",
                       args=[folder / role, tmp_path / "user" / "resaved", image])
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["module"].startswith("transformers_modules.")  # the folder's own code, not this project
    torch.testing.assert_close(torch.tensor(report["logits"]), expected[role]["logits"])
    torch.testing.assert_close(torch.tensor(report["logits_again"]), expected[role]["logits"])
    assert len(report["answers"]) == 7 and report["answers"] == report["answers_again"]
    assert report["trainable"] == expected[role]["trainable"]  # the frozen encoders do not count
    resaved = tmp_path / "user" / "resaved"
    config = json.loads((resaved / "config.json").read_text())
    for module in [*(v.split(".")[0] for v in config["auto_map"].values()),
                   *(spec["impl"].split(".")[0] for spec in config["custom_pipelines"].values())]:
        assert (resaved / f"{module}.py").is_file(), module
    for name in ("README.md", "processor_config.json", "efficientnet_stepcot.py", "backbones_stepcot.py",
                 "layers_stepcot.py", "companion_stepcot.py", "chain_stepcot.py", "ood_stepcot.py",
                 "gradcam_stepcot.py"):
        assert (resaved / name).is_file(), name
    # quiet: no processor/torchvision notice, no load-report table
    assert "torchvision" not in result.stderr and "LOAD REPORT" not in result.stderr, result.stderr


def test_exported_files_hold_no_local_path(exported):
    folder, _, _ = exported
    for path in Path(folder).rglob("*"):
        if path.is_file() and path.suffix in (".json", ".md", ".py", ".txt"):
            text = path.read_text(encoding="utf-8")
            for local in (str(Path.home()), str(folder), "/tmp/", "site-packages", str(Path(__file__).parents[1])):
                assert local not in text, f"{path.name} names the local path {local}"


def test_export_with_the_offline_encoders_names_no_local_path(tmp_path, capfd):
    """The offline MiniLM loads from a folder inside site-packages: the export records its Hub id instead, in the
    config (field and text sub-config) and the card; the card's links are real ones."""
    from transformers import AutoTokenizer

    from modeling_stepcot import StepCoTProcessor, StepCoTTeacher
    from trainers.model_export.export import export
    from trainers.training.offline_encoders import (
        OFFLINE_TEXT_ENCODER_HUB_ID,
        local_encoder_path,
        offline_text_encoder_path,
    )

    text = offline_text_encoder_path()
    model = StepCoTTeacher.from_pretrained_encoders(vision="efficientnet_lite0", text=text, hidden_size=64)
    processor = StepCoTProcessor.from_model_config(model.config, AutoTokenizer.from_pretrained(text))
    logs = capfd.readouterr().err
    assert "LOAD REPORT" not in logs and "torchvision" not in logs, logs  # quiet encoder loading
    export({"teacher": model}, processor, tmp_path, results={}, run_args={"model": {}}, table="")
    config = json.loads((tmp_path / "teacher" / "config.json").read_text())
    assert config["text_encoder_name_or_path"] == OFFLINE_TEXT_ENCODER_HUB_ID
    assert config["text_config"]["_name_or_path"] == OFFLINE_TEXT_ENCODER_HUB_ID
    assert local_encoder_path(OFFLINE_TEXT_ENCODER_HUB_ID) == text  # this machine still finds it offline
    card = (tmp_path / "teacher" / "README.md").read_text()
    assert f"`{OFFLINE_TEXT_ENCODER_HUB_ID}`" in card and "## Requirements" in card
    assert "https://github.com/)" not in card and "https://arxiv.org/abs/2603.13878" in card
    for path in (tmp_path / "teacher").iterdir():
        if path.suffix in (".json", ".md", ".py", ".txt"):
            assert "site-packages" not in path.read_text() and str(tmp_path) not in path.read_text(), path.name
