"""The Step-CoT web demo (Gradio): upload a chest X-ray, see the seven-step chain of one or two checkpoints side by
side, with probability bars, N/A, contradictions, consistent decoding, per-step Grad-CAM overlays and the JSON result.

    stepcot demo --model outputs/demo/student --compare outputs/demo/teacher      # http://127.0.0.1:7860
    stepcot demo --model outputs/demo/student --write-space space/                # a folder a HF Space runs as is

Everything the page shows comes from the `stepcot-vqa` pipeline (`modeling_stepcot/pipeline_stepcot.py`); fields
of a result or step that this page does not know are listed as they are, so new pipeline fields appear without a
change here. Bad input (not an image, a truncated file, an image too large, a folder that is not a checkpoint) is
reported in the page in one line; unexpected errors too (their traceback goes to the server log only).
"""

from __future__ import annotations

import html
import json
import logging
import re
import tempfile
import threading
from pathlib import Path

import modeling_stepcot  # noqa: F401  (registers the Step-CoT classes with the Auto API)
import trainers
from dataset_script.demo import make_demo_example
from trainers.evaluation.loading import load_model
from trainers.inference.predict import IMAGE_SUFFIXES, build_pipeline, json_ready
from trainers.inference.saliency import figure_and_maps, overlay

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "outputs/demo/student"  # what the README's main job writes
DEFAULT_COMPARE = "outputs/demo/teacher"
# Largest image accepted (width x height): 20 MP covers digital radiographs (up to ~4,300 x 3,500 px) while keeping
# the decoded image and its seven full-size maps (7 x 4 bytes per pixel) well under a few GB.
MAX_IMAGE_PIXELS = 20_000_000
MAX_UPLOAD_SIZE = "50mb"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# Result and step fields drawn specially; any other field is listed generically.
KNOWN_RESULT_FIELDS = {"steps", "chain", "violations", "is_consistent", "probability_method", "image_size", "maps",
                       "consistent_chain", "changed_steps", "reliable", "warnings", "refused", "rules_checked"}
KNOWN_STEP_FIELDS = {"step", "name", "question", "answer", "label", "score", "probabilities", "is_na",
                     "consistent_answer", "consistent_label", "changed", "trained"}
UNTRAINED = "unknown (not trained)"

CSS = """
.stepcot-columns {display: flex; gap: 16px; flex-wrap: wrap;}
.stepcot-model {flex: 1 1 420px; min-width: 320px;}
.stepcot-model h3 {margin: 4px 0 8px 0;}
.stepcot-step {border: 1px solid #d0d4da; border-radius: 8px; padding: 8px 10px; margin-bottom: 8px;}
.stepcot-step .question {color: #555; font-size: 0.85em;}
.stepcot-step .answer {font-weight: 600;}
.stepcot-bar-row {display: flex; align-items: center; gap: 6px; font-size: 0.8em; line-height: 1.3;}
.stepcot-bar-row .option {flex: 0 0 150px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap;}
.stepcot-bar-row .track {flex: 1; background: #eef0f3; border-radius: 3px; height: 10px;}
.stepcot-bar-row .fill {background: #3b82f6; height: 10px; border-radius: 3px;}
.stepcot-bar-row.top .fill {background: #1d4ed8;}
.stepcot-bar-row .value {flex: 0 0 42px; text-align: right;}
.stepcot-badge {display: inline-block; border-radius: 4px; padding: 0 6px; font-size: 0.75em; margin-left: 6px;}
.stepcot-badge.na {background: #e5e7eb; color: #374151;}
.stepcot-badge.changed {background: #fef3c7; color: #92400e;}
.stepcot-badge.extra {background: #e0e7ff; color: #3730a3;}
.stepcot-flags {border-radius: 8px; padding: 6px 10px; margin-bottom: 8px;}
.stepcot-flags.bad {background: #fee2e2; color: #7f1d1d;}
.stepcot-flags.good {background: #dcfce7; color: #14532d;}
.stepcot-chain {font-size: 0.85em; margin-bottom: 8px;}
.stepcot-error {background: #fee2e2; color: #7f1d1d; border-radius: 8px; padding: 8px 12px; font-weight: 600;}
.stepcot-info {color: #555;}
"""


class DemoError(ValueError):
    """A problem with the user's input, shown in the page as one line."""


# ---------------------------------------------------------------------------------------------------------------
# models


class PipelineCache:
    """Loads each checkpoint once (folder or Hub id) and keeps its `stepcot-vqa` pipeline; thread-safe."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self._pipelines: dict[str, object] = {}
        self._lock = threading.Lock()

    def get(self, source: str):
        source = (source or "").strip()
        if not source:
            raise DemoError("no checkpoint given: enter a model folder or a Hub id (user/name)")
        with self._lock:
            if source not in self._pipelines:
                self._pipelines[source] = load_demo_pipeline(source, self.device)
            return self._pipelines[source]


def load_demo_pipeline(source: str, device: str = "cpu"):
    """The pipeline of a Step-CoT checkpoint folder or Hub id; DemoError naming the problem otherwise. A Hub
    checkpoint's own code is never run: the classes of this package are used."""
    path = Path(source).expanduser()
    if not path.exists() and not HUB_ID.match(source):
        raise DemoError(f"{source}: no such folder, and not a Hub id (user/name)")
    try:
        model = load_model(path if path.exists() else source)
    except (ValueError, OSError) as error:  # ModelLoadError is a ValueError and names the file
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if path.exists():
            raise DemoError(f"{source} is not a Step-CoT checkpoint: {first_line}") from None
        raise DemoError(f"cannot load {source} from the Hub: {first_line}") from None
    return build_pipeline(model, device=device)


def model_label(pipe, source: str) -> str:
    kind = "Student" if pipe.model.config.model_type == "stepcot_student" else "Teacher"
    return f"{kind} ({Path(source).name or source})"


# ---------------------------------------------------------------------------------------------------------------
# input


def check_image_file(path) -> tuple[int, int]:
    """(width, height) of an uploaded image from its header; DemoError for a file that is not an image or is too
    large. Decoding problems (a truncated file) surface later, from the pipeline, also as one line."""
    from PIL import Image

    if path is None:
        raise DemoError("no image: upload a chest X-ray (PNG, JPEG, ...) or click an example")
    name = Path(path).name
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Image.DecompressionBombError:
        raise DemoError(f"{name} is too large (over {MAX_IMAGE_PIXELS // 1_000_000} megapixels)") from None
    except (OSError, SyntaxError, ValueError):  # UnidentifiedImageError is an OSError; broken headers vary
        raise DemoError(f"{name} is not an image file PIL can read (PNG, JPEG, BMP, TIFF, ...)") from None
    if width * height > MAX_IMAGE_PIXELS:
        raise DemoError(f"{name} is {width} x {height} px ({width * height / 1e6:.0f} megapixels); the demo "
                        f"accepts up to {MAX_IMAGE_PIXELS // 1_000_000} megapixels: downscale it first")
    return width, height


# ---------------------------------------------------------------------------------------------------------------
# rendering


def _escape(value) -> str:
    return html.escape(str(value))


def _format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_format_value(v) for v in value) or "none"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_format_value(v)}" for k, v in value.items())
    return str(value)


def _probability_bars(step: dict) -> str:
    rows = []
    for option, probability in step["probabilities"].items():
        top = " top" if option == step["answer"] else ""
        rows.append(
            f'<div class="stepcot-bar-row{top}"><span class="option" title="{_escape(option)}">{_escape(option)}'
            f'</span><span class="track"><div class="fill" style="width:{100 * probability:.1f}%"></div></span>'
            f'<span class="value">{probability:.2f}</span></div>'
        )
    return "".join(rows)


def render_step(step: dict) -> str:
    if step.get("trained") is False:  # no training labels: the head's output is noise, never shown as an answer
        return (f'<div class="stepcot-step" data-step="{_escape(step["step"])}">'
                f'<div><b>{_escape(step["step"])}. {_escape(step["name"])}</b></div>'
                f'<div class="question">{_escape(step["question"])}</div>'
                f'<div class="stepcot-info">Answer: {UNTRAINED}</div></div>')
    badges = ""
    if step.get("is_na"):
        badges += '<span class="stepcot-badge na">N/A</span>'
    for key, value in step.items():  # fields added by newer pipelines (e.g. whether the step was trained)
        if key not in KNOWN_STEP_FIELDS:
            badges += f'<span class="stepcot-badge extra">{_escape(key)}: {_escape(_format_value(value))}</span>'
    consistent = ""
    if "consistent_answer" in step:
        if step.get("changed"):
            consistent = (f'<div>consistent decoding: <b>{_escape(step["consistent_answer"])}</b>'
                          '<span class="stepcot-badge changed">changed</span></div>')
        else:
            consistent = '<div class="stepcot-info">consistent decoding: unchanged</div>'
    return (
        f'<div class="stepcot-step" data-step="{_escape(step["step"])}">'
        f'<div><b>{_escape(step["step"])}. {_escape(step["name"])}</b>{badges}</div>'
        f'<div class="question">{_escape(step["question"])}</div>'
        f'<div>Answer: <span class="answer">{_escape(step["answer"])}</span> (p = {step["score"]:.2f})</div>'
        f"{consistent}{_probability_bars(step)}</div>"
    )


def render_result(label: str, result: dict) -> str:
    if result.get("refused"):  # the sanity gate: no answers at all
        return (f'<div class="stepcot-model"><h3>{_escape(label)}</h3><div class="stepcot-flags bad" role="alert">'
                f"<b>Not answered:</b> {_escape(result['refused'])}</div></div>")
    warnings = "".join(f"<li>{_escape(w)}</li>" for w in result.get("warnings") or [])
    warning_box = (f'<div class="stepcot-flags bad" role="alert"><b>Unreliable answers</b><ul>{warnings}</ul></div>'
                   if result.get("reliable") is False else "")
    violations = result.get("violations") or []
    if violations:
        items = "".join(f"<li>{_escape(v.get('message', v))} <i>[{_escape(v.get('rule', ''))}]</i></li>"
                        for v in violations)
        flags = (f'<div class="stepcot-flags bad"><b>Contradictions ({len(violations)})</b><ul>{items}</ul>'
                 "</div>")
    elif result.get("rules_checked") == 0:
        flags = '<div class="stepcot-info">Contradictions not checked (no consistency rule applies)</div>'
    else:
        flags = '<div class="stepcot-flags good">No contradictions between the steps</div>'
    flags = warning_box + flags
    consistent = ""
    if "consistent_chain" in result:
        changed = ", ".join(result.get("changed_steps") or []) or "none"
        consistent = (f'<div class="stepcot-chain"><b>Most probable consistent chain</b> (changed: '
                      f"{_escape(changed)}): {_escape(result['consistent_chain'])}</div>")
    extras = "".join(f"<li>{_escape(key)}: {_escape(_format_value(value))}</li>"
                     for key, value in result.items() if key not in KNOWN_RESULT_FIELDS)
    extras = f'<ul class="stepcot-extra">{extras}</ul>' if extras else ""
    steps = "".join(render_step(step) for step in result["steps"])
    return (
        f'<div class="stepcot-model"><h3>{_escape(label)}</h3>{extras}{flags}'
        f'<div class="stepcot-chain"><b>Chain:</b> {_escape(result["chain"])}</div>{consistent}'
        f'<div class="stepcot-info">probabilities: {_escape(result.get("probability_method", ""))}</div>'
        f"{steps}</div>"
    )


def render_error(message: str) -> str:
    return f'<div class="stepcot-error" role="alert">{_escape(message)}</div>'


# ---------------------------------------------------------------------------------------------------------------
# one analysis


def json_result(image_path, results: list[tuple[str, dict]]) -> dict:
    return {"image": Path(image_path).name,
            "models": [{"model": label, **json_ready(result, Path(image_path).name, None)}
                       for label, result in results]}


def analyse(image_path, sources: list[str], consistent: bool, cache: PipelineCache, out_dir=None):
    """Run every checkpoint on one image. Returns (html, gallery items [(image, caption)], json path)."""

    check_image_file(image_path)
    pipes = [(source, cache.get(source)) for source in sources if source and source.strip()]
    if not pipes:
        raise DemoError("no checkpoint given: enter a model folder or a Hub id (user/name)")
    results, gallery = [], []
    for source, pipe in pipes:
        try:
            result = pipe(str(image_path), maps=True, consistent=consistent)
        except (ValueError, OSError) as error:  # decoding problems of the image, one line each
            raise DemoError(str(error).replace(str(image_path), Path(image_path).name)) from None
        label = model_label(pipe, source)
        picture, maps = figure_and_maps(str(image_path), result)
        gallery.append((picture, label))  # one row per checkpoint: the input, then its seven maps
        for step, saliency in zip(result["steps"], maps):
            caption = f"{step['step']}. {step['name']}: {step['answer'] or UNTRAINED}"
            gallery.append((overlay(picture, saliency), caption))
        result.pop("maps")
        results.append((label, result))
    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="stepcot-demo-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{Path(image_path).stem}_stepcot.json"
    json_path.write_text(json.dumps(json_result(image_path, results), indent=2), encoding="utf-8")
    columns = "".join(render_result(label, result) for label, result in results)
    page = f'<div class="stepcot-columns">{columns}</div>'
    return page, gallery, str(json_path)


# ---------------------------------------------------------------------------------------------------------------
# the app


def example_images(folder) -> list[str]:
    """Example radiographs: the image files of `folder` (sorted)."""

    folder = Path(folder)
    return sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []


def write_synthetic_examples(folder, count: int = 3, size: int = 320) -> list[str]:
    """Render a few synthetic radiographs (the demo data's generator) as examples when no real ones are given."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, diagnosis in enumerate(["Pneumothorax", "Pleural effusion", "Pneumonia", "Normal"][:count]):
        path = folder / f"synthetic_{index + 1}_{diagnosis.lower().replace(' ', '_')}.png"
        if not path.is_file():
            try:
                _, image = make_demo_example(index, 0, size, f"EX-{index}", diagnosis)
            except (KeyError, ValueError, AssertionError):  # a diagnosis this schema does not have
                continue
            Image.fromarray(image, mode="L").save(path)
        paths.append(str(path))
    return paths


def respond(image_file, sources: list[str], consistent: bool, cache: PipelineCache, out_dir=None):
    """What the page shows for one request: (message html, result html, gallery, json path). Never raises: input
    problems become a one-line message, unexpected errors too (with the traceback in the server log)."""
    try:
        page, gallery, json_path = analyse(image_file, sources, bool(consistent), cache, out_dir)
        return "", page, gallery, json_path
    except DemoError as error:
        return render_error(str(error)), "", [], None
    except Exception as error:  # noqa: BLE001
        logger.exception("stepcot demo: unexpected error")
        return render_error(f"unexpected error ({type(error).__name__}): {error}"), "", [], None


def build_demo(model: str = DEFAULT_MODEL, compare: str | None = DEFAULT_COMPARE, examples: list[str] | None = None,
               device: str = "cpu"):
    """The Gradio Blocks app. `model` / `compare`: the checkpoints shown first (editable in the page)."""
    import gradio as gr

    cache = PipelineCache(device)
    outputs_dir = Path(tempfile.mkdtemp(prefix="stepcot-demo-"))

    def run(image_file, model_source, compare_source, consistent):
        return respond(image_file, [model_source, compare_source], consistent, cache, outputs_dir)

    def run_if_image(image_file, *rest):  # a cleared upload clears the page instead of complaining
        return run(image_file, *rest) if image_file else ("", "", [], None)

    with gr.Blocks(title="Step-CoT chest X-ray VQA", analytics_enabled=False) as demo:
        gr.Markdown(
            "# Step-CoT: stepwise chest X-ray reasoning\n"
            "Upload a frontal chest X-ray (or click an example): each checkpoint answers the seven steps "
            "(detection → … → diagnosis) with its probabilities; contradictions between the steps are flagged and "
            "*consistent decoding* shows the most probable chain without them. The gallery shows each step's "
            "Grad-CAM map over the image. A research demo, not a medical device."
        )
        with gr.Row():
            with gr.Column(scale=1):
                image_file = gr.File(label="Chest X-ray (PNG, JPEG, ...)", type="filepath", elem_id="stepcot-upload")
                if examples:
                    gr.Examples(examples=[[path] for path in examples], inputs=[image_file], label="Examples")
            with gr.Column(scale=1):
                model_box = gr.Textbox(value=model, label="Checkpoint (folder or Hub id)", elem_id="stepcot-model")
                compare_box = gr.Textbox(value=compare or "", label="Compare with (optional)",
                                         elem_id="stepcot-compare")
                consistent = gr.Checkbox(label="Consistent decoding (show the most probable chain without "
                                         "contradictions and what it changes)", value=False,
                                         elem_id="stepcot-consistent")
                button = gr.Button("Answer the seven steps", variant="primary", elem_id="stepcot-run")
            with gr.Column(scale=1):
                json_file = gr.File(label="JSON result (download)", interactive=False, elem_id="stepcot-json")
        message = gr.HTML(elem_id="stepcot-message")
        result = gr.HTML(elem_id="stepcot-result")
        gallery = gr.Gallery(label="Grad-CAM per step (evidence for the predicted answer); one row per checkpoint",
                             columns=8, elem_id="stepcot-maps", height="auto", object_fit="contain")
        inputs = [image_file, model_box, compare_box, consistent]
        outputs = [message, result, gallery, json_file]
        button.click(run, inputs, outputs)
        image_file.change(run_if_image, inputs, outputs)  # an upload or a clicked example
        consistent.change(run_if_image, inputs, outputs)
    return demo


def launch(demo, host: str = "127.0.0.1", port: int | None = None, **kwargs):
    return demo.launch(server_name=host, server_port=port, max_file_size=MAX_UPLOAD_SIZE, css=CSS, quiet=True,
                       footer_links=[], **kwargs)



# ---------------------------------------------------------------------------------------------------------------
# a Hugging Face Space

# The code a Space needs next to app.py (the rest of the package is for training and evaluation).
SPACE_CODE = ["modeling_stepcot", "trainers/__init__.py", "trainers/inference/__init__.py",
              "trainers/inference/predict.py", "trainers/inference/saliency.py", "trainers/inference/demo_app.py"]
SPACE_REQUIREMENTS = ["torch", "transformers", "safetensors", "huggingface_hub", "numpy", "pillow", "matplotlib",
                      "gradio"]
SPACE_APP = '''"""Step-CoT chest X-ray demo (a Hugging Face Space written by `stepcot demo --write-space`)."""

from pathlib import Path

from trainers.inference.demo_app import build_demo, example_images, launch

HERE = Path(__file__).resolve().parent
MODEL = {model}
COMPARE = {compare}

demo = build_demo(model=MODEL, compare=COMPARE, examples=example_images(HERE / "examples"))

if __name__ == "__main__":
    launch(demo, host="0.0.0.0", port=7860)
'''


def _pinned_versions(names: list[str]) -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    lines = []
    for name in names:
        try:
            lines.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            lines.append(name)
    return lines


def _space_model_reference(source: str, folder: Path, name: str) -> str:
    """Copy a local checkpoint into the Space (models/NAME) and return app.py's expression for it; a Hub id stays."""
    import shutil

    if not source:
        return "None"
    path = Path(source).expanduser()
    if not path.exists():
        if not HUB_ID.match(source):
            raise DemoError(f"{source}: no such folder, and not a Hub id (user/name)")
        return repr(source)
    load_demo_pipeline(source)  # fail now, not in the Space, if it is not a checkpoint
    target = folder / "models" / name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(path, target, ignore=shutil.ignore_patterns("checkpoint-*", "runs", "*.pt", "*.bin"))
    return f'str(HERE / "models" / {name!r})'


def write_space(out, model: str = DEFAULT_MODEL, compare: str | None = DEFAULT_COMPARE,
                examples: list[str] | None = None) -> Path:
    """A folder that a Gradio Space runs as is: app.py, requirements.txt (pinned to this environment), README.md
    (the Space card), the demo's code, the checkpoint(s) when local, and example images."""
    import shutil

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    root = Path(trainers.__file__).resolve().parent.parent
    for relative in SPACE_CODE:
        source, target = root / relative, folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copyfile(source, target)
    model_ref = _space_model_reference(model, folder, "model")
    compare_ref = _space_model_reference(compare or "", folder, "compare")
    (folder / "app.py").write_text(SPACE_APP.format(model=model_ref, compare=compare_ref), encoding="utf-8")
    (folder / "requirements.txt").write_text("\n".join(_pinned_versions(SPACE_REQUIREMENTS)) + "\n",
                                             encoding="utf-8")
    examples_dir = folder / "examples"
    if examples:
        examples_dir.mkdir(exist_ok=True)
        for path in examples:
            shutil.copyfile(path, examples_dir / Path(path).name)
    else:
        write_synthetic_examples(examples_dir)
    gradio_version = _pinned_versions(["gradio"])[0].partition("==")[2] or "6.31.0"
    (folder / "README.md").write_text(
        "---\ntitle: Step-CoT chest X-ray VQA\nsdk: gradio\n"
        f"sdk_version: {gradio_version}\napp_file: app.py\npinned: false\nlicense: apache-2.0\n"
        "tags:\n- medical-imaging\n- chest-x-ray\n- visual-question-answering\n---\n\n"
        "Stepwise chest X-ray reasoning (Step-CoT): seven answered steps, contradictions, consistent decoding "
        "and per-step Grad-CAM maps. A research demo, not a medical device.\n",
        encoding="utf-8",
    )
    return folder


__all__ = [
    "DemoError",
    "analyse",
    "build_demo",
    "check_image_file",
    "launch",
    "render_result",
    "respond",
    "write_space",
]
