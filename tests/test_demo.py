"""The web demo's request handler (no browser): bad input becomes one line in the page, never an exception; the
Space folder runs on its own copy of the code. The browser test is tests/test_demo_browser.py."""

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from tiny_models import save_tiny_pair

from trainers import cli
from trainers.inference import demo_app


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return save_tiny_pair(tmp_path_factory.mktemp("demo_checkpoints"), seed=2)


@pytest.fixture(scope="module")
def cache():
    return demo_app.PipelineCache()


def _radiograph(path, size=(96, 80), mode="L"):
    rng = np.random.default_rng(0)
    if mode == "I;16":
        Image.fromarray((rng.random(size[::-1]) * 4095).astype(np.uint16)).save(path)
    else:
        Image.fromarray((rng.random(size[::-1]) * 255).astype(np.uint8), mode="L").save(path)
    return path


def _respond(image, checkpoints, cache, tmp_path, models=("student",), consistent=False):
    sources = [str(checkpoints / name) if name and "/" not in name else name for name in models]
    return demo_app.respond(str(image) if image else None, sources, consistent, cache, tmp_path / "out")


def _error(outcome) -> str:
    message, page, gallery, json_path = outcome
    assert page == "" and gallery == [] and json_path is None
    assert 'class="stepcot-error"' in message and "Traceback" not in message
    return message


def test_a_radiograph_gives_both_chains_maps_and_the_json(checkpoints, cache, tmp_path):
    image = _radiograph(tmp_path / "chest.png")
    message, page, gallery, json_path = _respond(image, checkpoints, cache, tmp_path, ("student", "teacher"), True)
    assert message == ""
    assert page.count('class="stepcot-step"') == 14 and "Most probable consistent chain" in page
    assert len(gallery) == 16  # per checkpoint: the input and seven maps
    assert all(picture.shape[2] == 3 and picture.dtype == np.uint8 for picture, _ in gallery)
    saved = json.loads(open(json_path).read())
    assert [m["model"].split()[0] for m in saved["models"]] == ["Student", "Teacher"]
    assert len(saved["models"][0]["steps"]) == 7 and "consistent_chain" in saved["models"][0]


def test_a_16_bit_png_is_windowed_and_answered(checkpoints, cache, tmp_path):
    image = _radiograph(tmp_path / "chest16.png", mode="I;16")
    assert Image.open(image).mode.startswith("I")
    message, page, gallery, _ = _respond(image, checkpoints, cache, tmp_path)
    assert message == "" and page.count('class="stepcot-step"') == 7
    assert gallery[0][0].std() > 0  # the input is shown windowed, not as a black picture


def test_bad_images_give_one_line(checkpoints, cache, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an x-ray")
    assert "notes.txt is not an image file" in _error(_respond(text, checkpoints, cache, tmp_path))

    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(1).random((400, 400)) * 255).astype(np.uint8)).save(buffer, "JPEG")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    message = _error(_respond(truncated, checkpoints, cache, tmp_path))
    assert "cut.jpg could not be decoded" in message and str(tmp_path) not in message

    huge = tmp_path / "huge.png"
    Image.new("1", (6000, 4000)).save(huge)  # 24 megapixels, a small file
    assert "huge.png is 6000 x 4000 px" in _error(_respond(huge, checkpoints, cache, tmp_path))

    assert "no image" in _error(_respond(None, checkpoints, cache, tmp_path))


def test_bad_checkpoints_give_one_line(checkpoints, cache, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import: the variable is late
    image = _radiograph(tmp_path / "chest.png")
    not_a_model = tmp_path / "just_a_folder"
    not_a_model.mkdir()
    assert "is not a Step-CoT checkpoint" in _error(_respond(image, checkpoints, cache, tmp_path, (str(not_a_model),)))
    assert "no such folder" in _error(_respond(image, checkpoints, cache, tmp_path, (str(tmp_path / "gone"),)))
    assert "cannot load someone/model from the Hub" in _error(
        _respond(image, checkpoints, cache, tmp_path, ("someone/model",)))
    assert "no checkpoint given" in _error(_respond(image, checkpoints, cache, tmp_path, ("", "")))


def test_unexpected_errors_stay_in_the_page(checkpoints, cache, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(demo_app, "analyse", broken)
    assert "unexpected error (RuntimeError): boom" in _error(_respond(None, checkpoints, cache, tmp_path))


def test_new_pipeline_fields_are_shown(checkpoints, cache, tmp_path):
    """Fields this page does not know (e.g. from a newer pipeline) are listed, not dropped."""
    result = cache.get(str(checkpoints / "student"))(str(_radiograph(tmp_path / "chest.png")))
    result["out_of_distribution"] = True
    result["steps"][2]["trained"] = False
    page = demo_app.render_result("Student", result)
    assert "out_of_distribution: True" in page
    assert "unknown (not trained)" in page  # an untrained step shows no answer (issue 13)


@pytest.mark.slow
def test_space_folder_runs_on_its_own_copy(checkpoints, tmp_path):
    pytest.importorskip("gradio")
    space = tmp_path / "space"
    assert cli.main(["demo", "--model", str(checkpoints / "student"), "--compare", str(checkpoints / "teacher"),
                     "--write-space", str(space)]) == 0
    assert {"app.py", "requirements.txt", "README.md", "models", "examples", "modeling_stepcot", "trainers"} <= {
        p.name for p in space.iterdir()}
    assert "gradio==" in (space / "requirements.txt").read_text()
    script = (
        "import app, trainers, sys\n"
        "from trainers.inference import demo_app\n"
        "assert trainers.__file__.startswith(sys.argv[1]), trainers.__file__\n"
        "example = demo_app.example_images('examples')[0]\n"
        "message, page, gallery, _ = demo_app.respond(example, [app.MODEL, app.COMPARE], True,"
        " demo_app.PipelineCache())\n"
        "assert message == '' and page.count('stepcot-step') == 14, message\n"
        "print('space ok', len(gallery))\n"
    )
    run = subprocess.run([sys.executable, "-c", script, str(space)], cwd=space, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)}, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "space ok 16" in run.stdout
