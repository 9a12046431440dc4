"""`stepcot predict` runs as fast as `stepcot eval` per image: the loaded model keeps the encoders its config
freezes frozen (so the teacher encodes its step questions once, not in every batch), and the command batches like
eval unless it draws maps."""

import numpy as np
import pytest
from PIL import Image
from tiny_models import save_tiny_pair

from trainers.choices import EVAL_BATCH_SIZE, MAPS_BATCH_SIZE
from trainers.inference.predict import build_pipeline, predict_images
from trainers.model_loading import load_model


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return save_tiny_pair(tmp_path_factory.mktemp("models"), seed=0)


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for index in range(5):
        path = folder / f"{index}.png"
        Image.fromarray(rng.integers(0, 256, (40, 36), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_loaded_model_keeps_its_config_frozen_encoders_frozen(model_dirs):
    teacher = load_model(model_dirs / "teacher")
    assert teacher.config.freeze_text_encoder and teacher.config.freeze_vision_encoder
    assert not any(p.requires_grad for p in teacher.text_encoder.parameters())
    assert not any(p.requires_grad for p in teacher.vision_encoder.parameters())
    assert all(p.requires_grad for p in teacher.step_heads.parameters())


def test_pipeline_encodes_the_step_questions_once_over_many_batches(model_dirs, image_paths):
    teacher = load_model(model_dirs / "teacher")
    calls = []
    teacher.text_encoder.register_forward_hook(lambda *_: calls.append(1))
    results = predict_images(build_pipeline(teacher), image_paths, batch_size=2)  # three batches
    assert len(results) == len(image_paths) and len(calls) == 1


def test_predictions_do_not_depend_on_the_batch_size(model_dirs, image_paths):
    pipe = build_pipeline(load_model(model_dirs / "teacher"))
    one = predict_images(pipe, image_paths, batch_size=1)
    default = predict_images(pipe, image_paths)
    for (a, _), (b, _) in zip(one, default):
        assert [s["label"] for s in a["steps"]] == [s["label"] for s in b["steps"]]
        assert np.allclose([s["score"] for s in a["steps"]], [s["score"] for s in b["steps"]], atol=1e-5)


class _RecordingPipe:
    def __init__(self):
        self.batch_sizes = []

    def __call__(self, images, batch_size, **options):
        self.batch_sizes.append(batch_size)
        return [{"maps": None} for _ in images]


def test_default_batch_is_evals_without_maps_and_smaller_with_them(tmp_path, monkeypatch):
    import trainers.inference.predict as predict_module

    paths = [tmp_path / f"{index}.png" for index in range(EVAL_BATCH_SIZE + 3)]
    pipe = _RecordingPipe()
    predict_images(pipe, paths)
    assert pipe.batch_sizes == [EVAL_BATCH_SIZE, 3]
    monkeypatch.setattr(predict_module, "save_step_maps", lambda *args: None)
    pipe = _RecordingPipe()
    predict_images(pipe, paths[:MAPS_BATCH_SIZE + 1], maps_dir=tmp_path / "maps")
    assert pipe.batch_sizes == [MAPS_BATCH_SIZE, 1]
