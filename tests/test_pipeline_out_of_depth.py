"""Honest when out of its depth: a sanity gate refuses inputs no chest radiograph looks like (a 1 x 1 PNG, a
banner, a colour photo, a blank frame) instead of answering them; out-of-distribution answers are marked
unreliable in the pipeline output, `predict` and the demo; "Contradictions: none" only when rules were checked."""

import json

import numpy as np
import pytest
from PIL import Image
from tiny_models import tiny_student

from modeling_stepcot.pipeline_stepcot import StepCoTVQAPipeline, refusal_reason
from trainers.inference.predict import format_table
from trainers.inference.web_demo import ImageRefused, ServedModel, analyse
from trainers.inference.web_demo_rendering import render_model


def _grey(height, width, seed=0):
    return np.random.default_rng(seed).integers(40, 220, (height, width), dtype=np.uint8)


@pytest.fixture(scope="module")
def student_pipe():
    return StepCoTVQAPipeline(model=tiny_student(seed=3).eval(), device="cpu")


def test_refusal_reasons():
    assert refusal_reason(1, 1, 0.0, 0.0).startswith("the image is too small (1 x 1 px")
    assert "aspect ratio 5.0:1" in refusal_reason(100, 500, 0.0, 30.0)
    assert "in colour" in refusal_reason(300, 300, 90.0, 30.0)
    assert "blank" in refusal_reason(300, 300, 0.0, 0.5)
    assert refusal_reason(1418, 1808, 0.0, 45.0) is None  # a real film's shape, grey, with contrast


def test_a_one_pixel_png_is_refused_not_answered(student_pipe, tmp_path, capsys):
    from trainers import cli

    path = tmp_path / "one.png"
    Image.fromarray(np.full((1, 1), 128, dtype=np.uint8)).save(path)
    result = student_pipe(str(path))
    assert result["refused"] and result["reliable"] is False and result["warnings"][0].startswith("refused")
    assert all(step["answer"] is None and step["probabilities"] is None for step in result["steps"])
    assert result["chain"] == "" and result["violations"] == [] and result["rules_checked"] == 0
    assert "REFUSED, NOT ANSWERED: the image is too small" in format_table("one.png", result, "student")

    model = tmp_path / "model"
    tiny_student(seed=3).save_pretrained(model)
    assert cli.main(["predict", str(path), "--model", str(model), "--json"]) == 0
    (printed,) = json.loads(capsys.readouterr().out)
    assert printed["refused"].startswith("the image is too small") and printed["reliable"] is False


@pytest.mark.parametrize("image", [
    np.zeros((200, 200), dtype=np.uint8) + 90,  # blank
    _grey(40, 400),  # a banner, not a film
    np.stack([_grey(120, 120), np.zeros((120, 120), np.uint8), _grey(120, 120, 1)], -1),  # a colour picture
])
def test_unreadable_inputs_are_refused_in_a_batch_beside_a_film(student_pipe, image):
    film, refused = student_pipe([_grey(120, 100), image], batch_size=2)
    assert film["refused"] is None and film["reliable"] is True and film["steps"][-1]["answer"] is not None
    assert refused["refused"] and all(step["score"] is None for step in refused["steps"])


def test_flagged_answers_are_marked_in_predict_and_the_demo(student_pipe):
    result = student_pipe(_grey(120, 100))
    assert result["rules_checked"] > 0  # seven steps: the rules are checked
    assert "Contradictions: none" in format_table("film.png", {**result, "violations": []}, "student")
    result["out_of_distribution"] = {"distance": 9.0, "threshold": 2.0, "quantile": 0.99, "flagged": True}
    result["reliable"], result["warnings"] = False, ["out of distribution: far from the training images"]
    table = format_table("film.png", result, "student")
    assert table.splitlines()[1].startswith("!!!") and "!! UNRELIABLE: out of distribution" in table
    assert "(?)" in table  # every answer carries the mark


def test_contradictions_none_only_when_rules_were_checked():
    model = tiny_student(step_names=["Diagnosis"], step_questions=["What is the diagnosis?"],
                         step_options=[["Normal", "Bacterial", "Viral"]])
    result = StepCoTVQAPipeline(model=model.eval(), device="cpu")(_grey(120, 100))
    assert result["rules_checked"] == 0
    table = format_table("film.png", result, "student")
    assert "Contradictions: none" not in table and "Contradictions: not checked" in table
    assert "not contradict" not in render_model({**result, "model": "student"})
    assert "Contradictions not checked" in render_model({**result, "model": "student"})


def test_the_demo_refuses_what_the_pipeline_refuses(student_pipe, tmp_path):
    blank = tmp_path / "blank.png"  # the right size and grey, but nothing on it
    Image.fromarray(np.full((300, 240), 90, dtype=np.uint8)).save(blank)
    with pytest.raises(ImageRefused, match="blank"):
        analyse(blank, [ServedModel("student", student_pipe, "tiny")], maps=False)
