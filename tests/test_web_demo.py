"""The web demo's request handler (no browser): bad input becomes one line or the refusal banner in the page, never
an exception; the page reads plainly. Hostile requests: tests/test_web_demo_security.py; the API:
tests/test_web_demo_api.py; the browser: tests/test_web_demo_browser.py; the Space folder:
tests/test_web_demo_space_cleanroom.py."""

import io

import numpy as np
import pytest
from PIL import Image
from tiny_models import save_tiny_pair

from trainers.inference import web_demo, web_demo_rendering


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return save_tiny_pair(tmp_path_factory.mktemp("demo_checkpoints"), seed=2)


@pytest.fixture(scope="module")
def choice(checkpoints):
    served = web_demo.load_served_models([str(checkpoints / "student"), str(checkpoints / "teacher")])
    return web_demo.ModelChoice(served)


def _radiograph(path, size=(96, 80), mode="L"):
    rng = np.random.default_rng(0)
    if mode == "blank":
        Image.new("L", size, 128).save(path)
    elif mode == "I;16":
        Image.fromarray((rng.random(size[::-1]) * 4095).astype(np.uint16)).save(path)
    elif mode == "RGB":
        Image.fromarray((rng.random((*size[::-1], 3)) * 255).astype(np.uint8), mode="RGB").save(path)
    else:
        Image.fromarray((rng.random(size[::-1]) * 255).astype(np.uint8), mode="L").save(path)
    return path


def _respond(image, choice, models=("Student",), consistent=False):
    return web_demo.respond(str(image) if image else None, list(models), consistent, choice)


def _error(outcome, css="stepcot-error") -> str:
    message, page, pictures, data = outcome
    assert page == "" and pictures == {} and data is None
    assert f'class="{css}' in message and "Traceback" not in message
    return message


def test_a_radiograph_gives_both_chains_maps_and_the_json(choice, tmp_path):
    image = _radiograph(tmp_path / "chest.png")
    message, page, pictures, data = _respond(image, choice, ("Student", "Teacher"), True)
    assert message == ""  # no banner: these models record no training statistics
    assert page.count('class="stepcot-step"') == 14
    assert list(pictures) == ["Student", "Teacher"]
    assert all(len(p) == 8 and p[0].shape[2] == 3 and p[0].dtype == np.uint8 for p in pictures.values())
    assert [m["model"] for m in data["models"]] == ["Student", "Teacher"]
    assert len(data["models"][0]["steps"]) == 7 and "consistent_chain" in data["models"][0]
    assert "Anything abnormal in the lungs?" in page and "Most likely diagnosis" in page  # plain labels
    assert "Training data: not recorded in this checkpoint." in page
    assert "consistent decoding: unchanged" not in page and "Student (student)" not in page


def test_changed_by_consistent_decoding_only_where_something_changed(choice, tmp_path):
    image = _radiograph(tmp_path / "chest.png")
    _, page, _, data = _respond(image, choice, ("Student",), True)
    changed = data["models"][0]["changed_steps"]
    assert page.count("changed by consistent decoding") == len(changed)
    entry = dict(data["models"][0], changed_steps=[])
    for step in entry["steps"]:
        step["changed"] = False
    assert "changed by consistent decoding" not in web_demo_rendering.render_model(entry)


def test_a_16_bit_png_is_windowed_and_answered(choice, tmp_path):
    image = _radiograph(tmp_path / "chest16.png", mode="I;16")
    assert Image.open(image).mode.startswith("I")
    message, page, pictures, _ = _respond(image, choice)
    assert message == "" and page.count('class="stepcot-step"') == 7
    assert pictures["Student"][0].std() > 0  # the input is shown windowed, not as a black picture


def test_bad_images_give_one_line(choice, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an x-ray")
    assert "notes.txt is not an image file" in _error(_respond(text, choice))

    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(1).random((400, 400)) * 255).astype(np.uint8)).save(buffer, "JPEG")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    message = _error(_respond(truncated, choice))
    assert "cut.jpg could not be decoded" in message and str(tmp_path) not in message

    huge = tmp_path / "huge.png"
    Image.new("1", (6000, 4000)).save(huge)  # 24 megapixels, a small file
    assert "huge.png is 6000 x 4000 px" in _error(_respond(huge, choice))

    assert "no image" in _error(_respond(None, choice))


@pytest.mark.parametrize("name, size, mode, why", [
    ("dot.png", (1, 1), "L", "1 x 1 px"),
    ("blank.png", (200, 200), "blank", "the image is blank"),
    ("strip.png", (600, 100), "L", "aspect ratio 6.0:1"),
    ("photo.png", (120, 120), "RGB", "the image is in colour"),
])
def test_the_sanity_gate_refuses_what_cannot_be_a_radiograph(choice, tmp_path, name, size, mode, why):
    image = _radiograph(tmp_path / name, size=size, mode=mode)
    message = _error(_respond(image, choice), css="stepcot-banner refused")
    assert f"{name} does not look like a chest radiograph" in message and why in message


def test_a_greyscale_rgb_radiograph_passes_the_gate(choice, tmp_path):
    path = tmp_path / "grey_rgb.png"
    Image.open(_radiograph(tmp_path / "g.png")).convert("RGB").save(path)
    assert web_demo.sanity_problems(path) == []


def test_unexpected_errors_stay_in_the_page(choice, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(web_demo, "analyse", broken)
    assert "unexpected error (RuntimeError): boom" in _error(_respond(None, choice))


def test_new_pipeline_fields_are_shown(choice, tmp_path):
    """Fields this page does not know (e.g. from a newer pipeline) are listed, not dropped."""
    data, _ = web_demo.analyse(_radiograph(tmp_path / "chest.png"), choice.choose(["Student"]), maps=False)
    entry = data["models"][0]
    entry["novel_score"] = 0.5
    entry["steps"][2]["trained"] = False
    page = web_demo_rendering.render_model(entry)
    assert "Novel score: 0.5" in page
    assert "unknown (not trained)" in page


def test_an_out_of_distribution_image_gets_the_banner_and_faded_answers(choice, tmp_path):
    data, _ = web_demo.analyse(_radiograph(tmp_path / "chest.png"), choice.choose(["Student"]), maps=False)
    entry = data["models"][0]
    entry.update(unreliable=True, out_of_distribution={"distance": 25.5, "threshold": 1.84, "flagged": True})
    data["unreliable"] = True
    assert web_demo_rendering.OOD_BANNER in web_demo_rendering.render_banner(data)
    assert 'class="stepcot-model stepcot-unreliable"' in web_demo_rendering.render_model(entry)
    assert "out_of_distribution" not in web_demo_rendering.render_model(entry)  # no raw snake_case line


def test_the_trained_on_line_comes_from_the_card(checkpoints, tmp_path):
    import shutil

    folder = tmp_path / "student"
    shutil.copytree(checkpoints / "student", folder)
    (folder / "README.md").write_text("---\ntags:\n- synthetic-data\n---\nMean over steps: accuracy 0.912, AUC 0.9.\n")
    (model,) = web_demo.load_served_models([str(folder)])
    assert "synthetic radiograph-like images" in model.trained_on and model.test_accuracy == pytest.approx(0.912)
