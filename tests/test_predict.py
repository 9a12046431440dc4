"""`stepcot predict` end to end: tables, JSON, map PNGs, clear errors, and the real pediatric JPEGs."""

import json

import numpy as np
import pytest
from PIL import Image
from tiny_models import save_tiny_pair

from trainers.cli import main as stepcot


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return save_tiny_pair(tmp_path_factory.mktemp("models"), seed=0)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (90, 70), dtype=np.uint8)).save(folder / "grey.png")
    Image.fromarray(rng.integers(0, 65535, (64, 64), dtype=np.uint16)).save(folder / "sixteen_bit.png")
    Image.fromarray(rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)).save(folder / "colour.jpg")
    return folder


def test_table_for_teacher_and_student(model_dirs, images, capsys):
    for role in ("teacher", "student"):
        assert stepcot(["predict", str(images / "grey.png"), "--model", str(model_dirs / role), "--consistent"]) == 0
        out = capsys.readouterr().out
        assert f"[{role}; probabilities: softmax (uncalibrated)]" in out
        assert out.count("\n 1  Detection") == 1 and "\n 7  Diagnosis" in out
        assert "Chain: Detection: " in out and "Consistent chain: Detection: " in out
        assert "Contradictions" in out


def test_json_and_maps_for_a_folder_of_images(model_dirs, images, tmp_path, capsys):
    maps_dir = tmp_path / "maps"
    code = stepcot(["predict", str(images), "--model", str(model_dirs / "student"), "--maps", str(maps_dir),
                    "--json", "--batch-size", "2"])
    assert code == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["image"].rsplit("/", 1)[-1] for r in results] == ["colour.jpg", "grey.png", "sixteen_bit.png"]
    grey = results[1]
    assert grey["image_size"] == [90, 70] and len(grey["steps"]) == 7
    assert set(grey["steps"][0]) >= {"question", "answer", "label", "probabilities", "is_na"}
    assert len(grey["maps"]["steps"]) == 7
    for path in grey["maps"]["steps"] + [grey["maps"]["summary"]]:
        with Image.open(path) as png:
            assert png.format == "PNG" and min(png.size) >= 100
    assert sorted(p.name for p in (maps_dir / "grey").iterdir()) == [
        "step1_detection.png", "step2_lesion_distribution.png", "step3_radiographic_pattern.png",
        "step4_anatomical_location.png", "step5_morphologic_feature.png", "step6_secondary_effects.png",
        "step7_diagnosis.png", "summary.png"]


def test_clear_errors(model_dirs, images, tmp_path, capsys):
    not_an_image = tmp_path / "scan.png"
    not_an_image.write_text("plain text")
    code = stepcot(["predict", str(images / "grey.png"), str(not_an_image), str(tmp_path / "absent.jpg"),
                    "--model", str(model_dirs / "student")])
    err = capsys.readouterr().err
    assert code == 2 and "scan.png is not a readable image" in err and "image not found" in err

    empty = tmp_path / "empty_model"
    empty.mkdir()
    assert stepcot(["predict", str(images / "grey.png"), "--model", str(empty)]) == 2
    assert "has no config.json: not a saved model folder" in capsys.readouterr().err

    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert stepcot(["predict", str(images / "grey.png"), "--model", str(other)]) == 2
    assert "holds a 'bert' model, not a Step-CoT teacher or student" in capsys.readouterr().err

    assert stepcot(["predict", str(images / "grey.png"), "--model", str(tmp_path / "nowhere")]) == 2
    assert "model folder not found" in capsys.readouterr().err


def test_real_pediatric_jpegs(shared_data_dir, model_dirs, tmp_path, capsys):
    folder = shared_data_dir / "kermany-pediatric-cxr"
    jpegs = sorted(folder.rglob("*.jpeg"))[:2] + sorted(folder.rglob("*.jpg"))[:1]
    if not jpegs:
        pytest.skip(f"no JPEGs under {folder}")
    code = stepcot(["predict", *map(str, jpegs), "--model", str(model_dirs / "teacher"), "--maps",
                    str(tmp_path / "maps"), "--consistent", "--json"])
    assert code == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == len(jpegs)
    for path, result in zip(jpegs, results):
        with Image.open(path) as image:
            assert result["image_size"] == [image.height, image.width]
        assert result["chain"].startswith("Detection: ") and len(result["maps"]["steps"]) == 7
