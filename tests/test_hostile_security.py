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


def test_predict_uses_the_package_classes_not_the_checkpoint_code(trapped, xray_png, capsys):
    folder, marker = trapped
    assert cli.main(["predict", str(xray_png), "--model", str(folder), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1
    assert not marker.exists()


def test_predict_refuses_an_unknown_model_type_without_trust_remote_code(trapped_unknown, xray_png, capsys):
    folder, marker = trapped_unknown
    assert cli.main(["predict", str(xray_png), "--model", str(folder)]) == 2
    error = capsys.readouterr().err
    assert "evil_model" in error and "--trust-remote-code" in error and len(error.strip().splitlines()) == 1
    assert not marker.exists()


def test_eval_transfer_and_efficiency_loaders_do_not_run_checkpoint_code(trapped):
    from trainers.model_loading import ModelLoadError
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
    from trainers.model_export.model_card import _count

    folder, marker = trapped
    config = StepCoTStudentConfig.from_pretrained(folder)  # name_or_path and auto_map point at the planted code
    total, trained = _count(config, "student")
    assert total.endswith(" M")
    assert not marker.exists()


def test_trust_remote_code_is_what_lets_checkpoint_code_run(trapped_unknown):
    """The refusal is a policy, not an inability: with the flag the same folder's code does run."""
    from trainers.model_loading import load_model

    folder, marker = trapped_unknown
    load_model(folder, trust_remote_code=True)  # AutoModel imports the classes named by the auto_map
    assert marker.exists()


def test_copied_checkpoint_without_code_still_loads(trapped, tmp_path):
    """A folder without the remote-code files (downloaded weights + config only) loads through the package."""
    from trainers.model_loading import load_model

    folder, marker = trapped
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(folder / name, bare / name)
    assert type(load_model(bare)).__name__ == "StepCoTStudent"


# ---------------------------------------------------------------------------------------------------------------
# Image paths never leave the release folder


SECRET = b"\x89PNG-looking secret bytes from outside the release"


@pytest.fixture
def escaping_release(demo_release_dir, tmp_path):
    """A copy of the demo release whose records 0-2 point outside it: `..`, an absolute path, a symlink under
    images/. The outside file is a real PNG (so only the path check can stop it) carrying a marker in its text."""
    from PIL import PngImagePlugin

    folder = tmp_path / "release"
    shutil.copytree(demo_release_dir, folder)
    outside = tmp_path / "outside.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("secret", SECRET.decode("latin-1"))
    Image.fromarray(np.full((64, 64), 7, dtype=np.uint8)).save(outside, pnginfo=info)
    for split_file in folder.glob("*.xlsx"):  # they list image paths; without them the split is drawn by patient
        split_file.unlink()
    records = json.loads((folder / "data.json").read_text())
    (folder / "images" / "link.png").symlink_to(outside)
    records[0]["image_path"] = "../outside.png"
    records[1]["image_path"] = str(outside)
    records[2]["image_path"] = "images/link.png"
    (folder / "data.json").write_text(json.dumps(records))
    return folder, records, outside


def test_image_paths_outside_the_release_are_named_validation_errors(escaping_release, tmp_path):
    from dataset_script.records import StepCoTDataError
    from dataset_script.release import StepCoTRelease

    folder, records, _ = escaping_release
    with pytest.raises(StepCoTDataError, match=r"record 0 .*image_path.*'\.\.'"):
        StepCoTRelease(folder, strict=True)
    report_path = tmp_path / "report.json"
    release = StepCoTRelease(folder, strict=False, report_path=report_path)
    skipped = {entry["index"]: entry["problems"][0] for entry in json.loads(report_path.read_text())["skipped"]}
    assert {0, 1, 2} <= set(skipped)
    assert "'..'" in skipped[0]["text"] and "absolute" in skipped[1]["text"]
    assert "symbolic link" in skipped[2]["text"]
    assert all(skipped[i]["field"] == "image_path" for i in (0, 1, 2))
    assert len(release) == len(records) - len(skipped)


def test_lenient_build_never_embeds_bytes_from_outside(escaping_release, tmp_path):
    from dataset_script.parquet_export import build_hub_dataset

    folder, records, _ = escaping_release
    out = tmp_path / "hub"
    build_hub_dataset(folder, out, strict=False)
    parquet = b"".join(path.read_bytes() for path in out.rglob("*.parquet"))
    assert parquet and SECRET not in parquet


def test_safe_paths_helper():
    from dataset_script.safe_paths import UnsafePathError, inside_root, safe_relative_path

    assert str(safe_relative_path("images\\a.png")) == "images/a.png"
    assert str(safe_relative_path("./images//a.png")) == "images/a.png"
    for bad in ("../a.png", "images/../../a.png", "/etc/passwd", "C:\\x.png", "c:x.png", "//server/x", "", "a\x00b"):
        with pytest.raises(UnsafePathError):
            safe_relative_path(bad)
    with pytest.raises(UnsafePathError):
        inside_root("/tmp", "../x")


def test_archive_style_member_through_a_symlinked_folder_is_refused(tmp_path):
    from dataset_script.safe_paths import UnsafePathError, inside_root

    root = tmp_path / "root"
    root.mkdir()
    (root / "images").symlink_to(tmp_path)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        inside_root(root, "images/evil.png")
    assert inside_root(root, "data/ok.png") == root / "data" / "ok.png"


@pytest.mark.parametrize("patient_id", ["../../etc/passwd", "..", "a/b", "x\\..\\..\\y"])
def test_annotate_template_refuses_ids_that_are_not_file_names(tmp_path, patient_id):
    from dataset_script.annotate.records import ReportError, read_reports

    reports = tmp_path / "reports.jsonl"
    reports.write_text(json.dumps({"id": patient_id, "findings": "Clear lungs."}) + "\n"
                       + json.dumps({"id": "ok1", "findings": "Clear lungs."}) + "\n")
    with pytest.raises(ReportError, match="image-path-template"):
        read_reports(reports, image_path_template="images/{patient_id}.png")
    lenient = read_reports(reports, strict=False, image_path_template="images/{patient_id}.png")
    assert [row.image_path for row in lenient.rows] == ["images/ok1.png"]
    assert len(lenient.skipped) == 1 and "image-path-template" in lenient.skipped[0]["reason"]


def test_annotate_template_that_is_itself_absolute_is_refused(tmp_path):
    from dataset_script.annotate.records import ReportError, read_reports

    reports = tmp_path / "reports.jsonl"
    reports.write_text(json.dumps({"id": "p1", "findings": "Clear lungs."}) + "\n")
    with pytest.raises(ReportError, match="absolute"):
        read_reports(reports, image_path_template="/etc/{patient_id}")
