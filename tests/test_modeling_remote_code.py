"""Save -> load through AutoModel + trust_remote_code in a fresh offline process that cannot import this package."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import random_batch, tiny_student, tiny_teacher

LOADER = textwrap.dedent(
    """
    import sys
    sys.modules["modeling_stepcot"] = None  # the package is not importable: remote code only
    import torch
    from transformers import AutoConfig, AutoModel
    model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    config = AutoConfig.from_pretrained(sys.argv[1], trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    pixel_values = torch.load(sys.argv[2], weights_only=True)
    with torch.no_grad():
        torch.save(model(pixel_values=pixel_values).logits, sys.argv[3])
    print(type(model).__name__, config.model_type)
    """
)


@pytest.mark.slow  # a fresh offline process per model
@pytest.mark.parametrize("factory", [tiny_teacher, tiny_student])
def test_auto_model_round_trip_in_fresh_offline_process(factory, tmp_path):
    model = factory().eval()
    pixel_values, _ = random_batch(3)
    with torch.no_grad():
        expected = model(pixel_values=pixel_values).logits
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)

    files = sorted(p.name for p in checkpoint.iterdir())
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    assert {"configuration_stepcot.py", "modeling_stepcot.py"} <= set(files)
    auto_map = json.loads((checkpoint / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == f"modeling_stepcot.{type(model).__name__}"
    if hasattr(model, "question_input_ids"):  # the tokenized questions travel with the weights
        assert torch.equal(load_file(checkpoint / "model.safetensors")["question_input_ids"], model.question_input_ids)

    torch.save(pixel_values, tmp_path / "pixels.pt")
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), PYTHONPATH="")
    result = subprocess.run(
        [sys.executable, "-c", LOADER, str(checkpoint), str(tmp_path / "pixels.pt"), str(tmp_path / "out.pt")],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert type(model).__name__ in result.stdout
    loaded_logits = torch.load(tmp_path / "out.pt", weights_only=True)
    assert torch.equal(loaded_logits, expected)


def test_in_library_auto_classes_resolve_without_remote_code(tmp_path):
    from transformers import AutoModel

    from modeling_stepcot import StepCoTStudent

    tiny_student().save_pretrained(tmp_path)
    assert isinstance(AutoModel.from_pretrained(tmp_path), StepCoTStudent)
    assert Path(tmp_path, "config.json").exists()
