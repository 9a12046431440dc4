"""The built wheel is a complete product: installed into a fresh virtualenv (dependencies reused from this
environment, no source tree on the path), it imports, runs the console script and exports a model whose model
card is rendered from the templates shipped as package data."""

import shutil
import site
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("modeling_stepcot", "dataset_script", "trainers", "model_cards", "setup.cfg", "pyproject.toml", "README.md")

EXPORT_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path

    import modeling_stepcot, trainers
    from transformers import BertTokenizerFast

    from modeling_stepcot import StepCoTProcessor, StepCoTStudent, StepCoTStudentConfig
    from trainers.model_export.export import export

    venv = Path(sys.prefix).resolve()
    for module in (modeling_stepcot, trainers):  # imported from the installed wheel, not from a source tree
        assert Path(module.__file__).resolve().is_relative_to(venv), module.__file__
    config = StepCoTStudentConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                           image_size=32, patch_size=8, projection_dim=24),
        hidden_size=16,
    )
    model = StepCoTStudent(config)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "is"]
    tokenizer = BertTokenizerFast(vocab={word: index for index, word in enumerate(words)})
    processor = StepCoTProcessor.from_model_config(config, tokenizer)
    export({"student": model}, processor, Path("exported"), results={}, run_args={"model": {}}, table="")
    print("exported", sorted(p.name for p in Path("exported/student").iterdir()))
""")


def _run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_virtualenv_and_exports_a_model(tmp_path):
    source = tmp_path / "source"  # a copy: building in the repository would leave build/ and *.egg-info there
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, source / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(tmp_path / "dist"), str(source)])
    (wheel,) = (tmp_path / "dist").glob("stepcot-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    venv_site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
                     .stdout.strip())
    # Reuse this environment's installed dependencies (torch, transformers, ...). A plain .pth line adds the
    # folder but does not run the .pth files in it, so an editable install of this project there stays inactive.
    dependency_paths = dict.fromkeys([*site.getsitepackages(), sysconfig.get_paths()["purelib"]])
    (venv_site / "_stepcot_test_dependencies.pth").write_text("\n".join(dependency_paths) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
          str(wheel)])

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)}
    version = _run([str(venv / "bin" / "stepcot"), "--version"], cwd=work, env=env)
    assert version.stdout.startswith("stepcot 0.")
    exported = _run([str(python), "-c", EXPORT_SCRIPT], cwd=work, env=env)
    assert "exported" in exported.stdout
    card = (work / "exported" / "student" / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---") and "Step-CoT" in card
    assert {"config.json", "model.safetensors", "modeling_stepcot.py"} <= {
        p.name for p in (work / "exported" / "student").iterdir()}
