"""A Hugging Face Space folder for the web demo (`stepcot demo --write-space`): app.py over `web_demo.py`,
requirements.txt, the Space card, the packages app.py imports (whole), the checkpoints and example images."""

from __future__ import annotations

import shutil
from pathlib import Path

import trainers
from trainers.inference.web_demo import (
    DEFAULT_COMPARE,
    DEFAULT_MODEL,
    HUB_ID,
    DemoError,
    load_demo_pipeline,
    write_synthetic_examples,
)

# The packages app.py imports, copied whole (a partial copy would shadow an installed stepcot with half of it).
SPACE_PACKAGES = ["modeling_stepcot", "trainers", "dataset_script", "model_cards"]
SPACE_REQUIREMENTS = ["transformers", "safetensors", "huggingface_hub", "numpy", "pillow", "matplotlib", "gradio"]
SPACE_APP = '''"""Step-CoT chest X-ray demo (a Hugging Face Space written by `stepcot demo --write-space`).

Serves the models in models/ and nothing else; `python app.py` binds where a Space expects
($GRADIO_SERVER_NAME / $GRADIO_SERVER_PORT, default 0.0.0.0:7860).
"""

import os
from pathlib import Path

from trainers.inference.web_demo import build_demo, example_images, launch

HERE = Path(__file__).resolve().parent
MODEL = {model}
COMPARE = {compare}

demo = build_demo(model=MODEL, compare=COMPARE, examples=example_images(HERE / "examples"))

if __name__ == "__main__":
    launch(demo, host=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
           port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
'''


def space_requirements() -> list[str]:
    """requirements.txt of a Space: plain `torch` (the Space picks its build), the rest pinned to this
    environment. Every vision backbone's code is in modeling_stepcot and its weights in the checkpoint."""
    from importlib.metadata import PackageNotFoundError, version

    lines = ["torch"]
    for name in SPACE_REQUIREMENTS:
        try:
            lines.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            lines.append(name)
    return lines


def _space_model_reference(source: str, folder: Path, taken: str = "") -> str:
    """Copy a local checkpoint into the Space (models/<its folder name>, so the page labels it as at home) and
    return app.py's expression for it; a Hub id stays."""
    if not source:
        return "None"
    path = Path(source).expanduser()
    if not path.exists():
        if not HUB_ID.match(source):
            raise DemoError(f"{source}: no such folder, and not a Hub id (user/name)")
        return repr(source)
    load_demo_pipeline(source)  # fail now, not in the Space, if it is not a checkpoint
    name = path.resolve().name or "model"
    name = name if name != taken else f"{name}_2"
    target = folder / "models" / name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(path, target, ignore=shutil.ignore_patterns("checkpoint-*", "runs", "*.pt", "*.bin"))
    return f'str(HERE / "models" / {name!r})'


def write_space(out, model: str = DEFAULT_MODEL, compare: str | None = DEFAULT_COMPARE,
                examples: list[str] | None = None) -> Path:
    """A folder that a Gradio Space runs as is (`pip install -r requirements.txt && python app.py`): app.py,
    requirements.txt, README.md (the Space card), the packages app.py imports (whole), the checkpoint(s) when
    local, and example images."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    root = Path(trainers.__file__).resolve().parent.parent
    for package in SPACE_PACKAGES:
        target = folder / package
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(root / package, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if (folder / "models").exists():
        shutil.rmtree(folder / "models")
    model_ref = _space_model_reference(model, folder)
    taken = Path(model).expanduser().resolve().name if model and Path(model).expanduser().exists() else ""
    compare_ref = _space_model_reference(compare or "", folder, taken)
    (folder / "app.py").write_text(SPACE_APP.format(model=model_ref, compare=compare_ref), encoding="utf-8")
    requirements = space_requirements()
    (folder / "requirements.txt").write_text("\n".join(requirements) + "\n", encoding="utf-8")
    examples_dir = folder / "examples"
    if examples:
        examples_dir.mkdir(exist_ok=True)
        for path in examples:
            shutil.copyfile(path, examples_dir / Path(path).name)
    else:
        write_synthetic_examples(examples_dir)
    gradio_version = next((line.partition("==")[2] for line in requirements if line.startswith("gradio==")), "")
    (folder / "README.md").write_text(
        "---\ntitle: Step-CoT chest X-ray VQA\nsdk: gradio\n"
        f"sdk_version: {gradio_version or '6.31.0'}\napp_file: app.py\npinned: false\nlicense: apache-2.0\n"
        "tags:\n- medical-imaging\n- chest-x-ray\n- visual-question-answering\n---\n\n"
        "Stepwise chest X-ray reasoning (Step-CoT): seven answered steps, contradictions, consistent decoding "
        "and per-step Grad-CAM maps. A research demo, not a medical device.\n",
        encoding="utf-8",
    )
    return folder

