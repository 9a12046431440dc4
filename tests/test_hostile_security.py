"""Hostile inputs, security: no command that inspects or runs a model executes code shipped inside the checkpoint
(unless `--trust-remote-code`), and no image path escapes its release folder."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import tiny_student  # noqa: E402

from trainers import cli  # noqa: E402

TRAP = "\nimport pathlib as _pathlib\n_pathlib.Path({marker!r}).write_text('checkpoint code ran')\n"


def _plant(folder: Path, marker: Path) -> None:
    """Make every code file the checkpoint carries write `marker` when imported."""
    for name in ("configuration_stepcot.py", "modeling_stepcot.py"):
        path = folder / name
        path.write_text(path.read_text(encoding="utf-8") + TRAP.format(marker=str(marker)), encoding="utf-8")


@pytest.fixture
def trapped(tmp_path):
    """(a Step-CoT student folder whose remote code writes a marker file when imported, the marker path)."""
    folder = tmp_path / "student"
    tiny_student().save_pretrained(folder)
    assert (folder / "configuration_stepcot.py").is_file() and "auto_map" in (folder / "config.json").read_text()
    marker = tmp_path / "MARKER"
    _plant(folder, marker)
    return folder, marker


@pytest.fixture
def trapped_unknown(trapped):
    """The same folder renamed to an unknown model_type whose auto_map points at the planted code."""
    folder, marker = trapped
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "evil_model"
    (folder / "config.json").write_text(json.dumps(config))
    return folder, marker


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "xray.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8)).save(path)
    return path


def test_info_reads_config_and_headers_without_running_checkpoint_code(trapped):
    """In a fresh interpreter, as a user runs it (in this process the package's classes are already registered)."""
    folder, marker = trapped
    result = subprocess.run([sys.executable, "-m", "trainers.cli", "info", str(folder), "--json"],
                            capture_output=True, text=True, timeout=120)
    assert not marker.exists()
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["class"] == "StepCoTStudent" and info["stored_tensors"] > 0


def test_info_refuses_an_unknown_model_type_without_running_its_code(trapped_unknown, capsys):
    folder, marker = trapped_unknown
    try:
        assert cli.main(["info", str(folder)]) == 1
        assert "evil_model" in capsys.readouterr().err
    finally:
        assert not marker.exists()


def test_predict_uses_the_package_classes_not_the_checkpoint_code(trapped, image_file, capsys):
    folder, marker = trapped
    assert cli.main(["predict", str(image_file), "--model", str(folder), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1
    assert not marker.exists()


def test_predict_refuses_an_unknown_model_type_without_trust_remote_code(trapped_unknown, image_file, capsys):
    folder, marker = trapped_unknown
    assert cli.main(["predict", str(image_file), "--model", str(folder)]) == 2
    error = capsys.readouterr().err
    assert "evil_model" in error and "--trust-remote-code" in error and len(error.strip().splitlines()) == 1
    assert not marker.exists()


def test_eval_transfer_and_efficiency_loaders_do_not_run_checkpoint_code(trapped):
    from trainers.evaluation.loading import ModelLoadError
    from trainers.paper.efficiency import build_model
    from trainers.paper.transfer import load_diagnosis_model

    folder, marker = trapped
    assert load_diagnosis_model(folder, "cpu").options
    build_model(f"dir:{folder}")
    assert not marker.exists()
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "evil_model"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="--trust-remote-code"):
        load_diagnosis_model(folder, "cpu")
    with pytest.raises(ModelLoadError, match="--trust-remote-code"):
        build_model(f"dir:{folder}")
    assert not marker.exists()


def test_eval_does_not_run_checkpoint_code(trapped, hub_dataset, tmp_path):
    from trainers.evaluation.evaluate_model import evaluate

    folder, marker = trapped
    result = evaluate(folder, str(hub_dataset), split="test", batch_size=8, num_bootstrap=0, device="cpu",
                      max_examples=4, plots=False)
    assert result.num_examples == 4
    assert not marker.exists()
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "evil_model"
    (folder / "config.json").write_text(json.dumps(config))
    assert cli.main(["eval", "--model", str(folder), "--dataset", str(hub_dataset), "--out",
                     str(tmp_path / "eval"), "--num-bootstrap", "0", "--no-plots"]) == 1
    assert not marker.exists()


def test_model_card_counts_parameters_without_the_configs_auto_map_code(trapped):
    from modeling_stepcot import StepCoTStudentConfig
    from trainers.hub.model_card import _count

    folder, marker = trapped
    config = StepCoTStudentConfig.from_pretrained(folder)  # name_or_path and auto_map point at the planted code
    total, trained = _count(config, "student")
    assert total.endswith(" M")
    assert not marker.exists()


def test_trust_remote_code_is_what_lets_checkpoint_code_run(trapped_unknown):
    """The refusal is a policy, not an inability: with the flag the same folder's code does run."""
    from trainers.evaluation.loading import load_model

    folder, marker = trapped_unknown
    load_model(folder, trust_remote_code=True)  # AutoModel imports the classes named by the auto_map
    assert marker.exists()


def test_copied_checkpoint_without_code_still_loads(trapped, tmp_path):
    """A folder without the remote-code files (downloaded weights + config only) loads through the package."""
    from trainers.evaluation.loading import load_model

    folder, marker = trapped
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(folder / name, bare / name)
    assert type(load_model(bare)).__name__ == "StepCoTStudent"
