"""Hostile inputs, loading: damaged checkpoints are named errors (not warnings or NaN output), JSON output is strict,
and `stepcot predict` names every failure in one line with its file."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import tiny_student  # noqa: E402

from trainers import cli  # noqa: E402
from trainers.model_loading import ModelLoadError, load_model  # noqa: E402


def _reject_constant(name):
    raise ValueError(f"non-standard JSON constant {name}")


def strict_loads(text):
    """json.loads that refuses NaN / Infinity, as JavaScript, jq and most other parsers do."""
    return json.loads(text, parse_constant=_reject_constant)


@pytest.fixture
def student_dir(tmp_path):
    folder = tmp_path / "student"
    tiny_student().save_pretrained(folder)
    return folder


def _edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))  # json writes NaN / Infinity tokens, and reads them back


def _edit_weights(folder, edit):
    weights = load_file(folder / "model.safetensors")
    edit(weights)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


def test_intact_checkpoint_loads(student_dir):
    assert type(load_model(student_dir)).__name__ == "StepCoTStudent"


def test_missing_head_weights_are_an_error(student_dir):
    _edit_weights(student_dir, lambda w: w.pop("step_heads.3.weight"))
    with pytest.raises(ModelLoadError, match=r"missing from the checkpoint: step_heads\.3\.weight"):
        load_model(student_dir)


def test_extra_steps_in_the_weights_are_an_error(student_dir):
    config = json.loads((student_dir / "config.json").read_text())
    _edit_config(student_dir, **{key: config[key][:6] for key in ("step_names", "step_questions", "step_options")})
    with pytest.raises(ModelLoadError, match=r"not in the model .*step_heads\.6"):
        load_model(student_dir)


def test_missing_steps_in_the_weights_are_an_error(student_dir):
    config = json.loads((student_dir / "config.json").read_text())
    _edit_config(student_dir, step_names=config["step_names"] + ["Extra"],
                 step_questions=config["step_questions"] + ["Extra?"],
                 step_options=config["step_options"] + [["a", "b"]])
    with pytest.raises(ModelLoadError, match=r"missing from the checkpoint: step_heads\.7"):
        load_model(student_dir)


def test_head_of_the_wrong_size_is_an_error(student_dir):
    def widen(weights):
        weights["step_heads.0.weight"] = torch.zeros(9, weights["step_heads.0.weight"].shape[1])
        weights["step_heads.0.bias"] = torch.zeros(9)

    _edit_weights(student_dir, widen)
    with pytest.raises(ModelLoadError, match=r"step_heads\.0"):
        load_model(student_dir)


def test_nan_weights_are_an_error_not_nan_answers(student_dir):
    _edit_weights(student_dir, lambda w: w["step_heads.2.bias"].fill_(float("nan")))
    with pytest.raises(ModelLoadError, match=r"step_heads\.2\.bias.*NaN"):
        load_model(student_dir)


@pytest.mark.parametrize("temperature", [float("nan"), float("inf"), -1.0, 0.0])
def test_bad_calibration_temperatures_are_an_error(student_dir, temperature):
    temperatures = [1.0] * 7
    temperatures[4] = temperature
    _edit_config(student_dir, calibration={"method": "temperature", "temperatures": temperatures, "split": "x"})
    with pytest.raises(ModelLoadError, match="calibration temperatures"):
        load_model(student_dir)


def test_pipeline_refuses_nan_temperatures_too():
    """The pipeline (remote code, usable without the loader) refuses NaN too (`min([1, nan]) <= 0` is False)."""
    from modeling_stepcot.pipeline_stepcot import step_temperatures

    config = tiny_student().config
    config.calibration = {"method": "temperature", "temperatures": [1.0] * 6 + [math.nan]}
    with pytest.raises(ValueError, match="finite positive"):
        step_temperatures(config)


@pytest.mark.parametrize("image_size", [0, 3, 10**6])
def test_absurd_image_size_is_an_error_before_anything_is_built(student_dir, image_size):
    config = json.loads((student_dir / "config.json").read_text())
    config["vision_config"]["image_size"] = image_size
    _edit_config(student_dir, vision_config=config["vision_config"], image_size=image_size)
    with pytest.raises(ModelLoadError, match="image_size"):
        load_model(student_dir)


def test_predict_names_a_damaged_model_in_one_line(student_dir, xray_png, capsys):
    _edit_weights(student_dir, lambda w: w.pop("step_heads.0.bias"))
    assert cli.main(["predict", str(xray_png), "--model", str(student_dir)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(student_dir) in error and "step_heads.0.bias" in error


def test_predict_names_every_bad_image_in_one_line(student_dir, xray_png, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    missing = tmp_path / "missing.png"
    assert cli.main(["predict", str(xray_png), str(broken), str(missing), "--model", str(student_dir)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(broken) in error and str(missing) in error


def test_predict_names_an_unwritable_maps_folder_in_one_line(student_dir, xray_png, tmp_path, capsys):
    blocker = tmp_path / "maps"
    blocker.write_text("a file where the maps folder should go")
    assert cli.main(["predict", str(xray_png), "--model", str(student_dir), "--maps", str(blocker)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(blocker) in error


def test_predict_names_the_image_whose_decoding_fails(student_dir, xray_png, tmp_path, capsys):
    truncated = tmp_path / "truncated.png"
    data = (tmp_path / "big.png")
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8)).save(data)
    truncated.write_bytes(data.read_bytes()[:200])
    assert cli.main(["predict", str(xray_png), str(truncated), "--model", str(student_dir)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(truncated) in error


def test_predict_json_is_strict_json(student_dir, xray_png, capsys):
    assert cli.main(["predict", str(xray_png), "--model", str(student_dir), "--json"]) == 0
    results = strict_loads(capsys.readouterr().out)
    assert results[0]["steps"][0]["score"] > 0


def test_strict_json_writes_null_for_nan_and_infinity():
    from trainers.evaluation.report import strict_json

    text = strict_json({"a": math.nan, "b": [np.float32("inf"), 1.5], "c": np.array([np.nan, 2.0]), "d": np.int64(3)})
    assert strict_loads(text) == {"a": None, "b": [None, 1.5], "c": [None, 2.0], "d": 3}


def test_info_json_is_strict_json(student_dir, capsys):
    assert cli.main(["info", str(student_dir), "--json"]) == 0
    assert strict_loads(capsys.readouterr().out)["model_type"] == "stepcot_student"
