"""The Step-CoT web demo (Gradio): upload a chest X-ray, see the seven-step chain of the served models side by
side, with a reliability banner, plain-language steps, contradictions, consistent decoding and a per-step Grad-CAM
overlay.

    stepcot demo --model outputs/demo/student --compare outputs/demo/teacher      # http://127.0.0.1:7860
    stepcot demo --model outputs/demo/student --write-space space/                # a folder a HF Space runs as is

The served models are fixed when the demo starts (`build_demo(models=[...])`) and loaded once: a visitor chooses
among them by label and can never name a folder or Hub id (unless the operator starts the demo with
`allow_any_model_path=True`, `stepcot demo --allow-any-model-path`, which lets visitors make the server read any
checkpoint folder it can see). The API has one endpoint, `/predict(image, models, consistent)`, that returns the
result as JSON data (see the README's "Web demo" section for the `gradio_client` call).

Everything the page shows comes from the `stepcot-vqa` pipeline (`modeling_stepcot/pipeline_stepcot.py`); fields
of a result or step that this page does not know are listed as they are. Bad input (not an image, a truncated
file, an image too large, too small, extremely elongated or in colour) is refused in the page in one line;
unexpected errors too (their traceback goes to the server log only).
"""

from __future__ import annotations

import html
import logging
import re
import shutil
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import modeling_stepcot  # noqa: F401  (registers the Step-CoT classes with the Auto API)
import trainers
from dataset_script.synthetic import make_demo_example
from modeling_stepcot.pipeline_stepcot import MIN_GREY_STD, image_statistics, refusal_reason
from trainers.choices import DEFAULT_DEMO_COMPARE, DEFAULT_DEMO_MODEL
from trainers.evaluation.loading import load_model
from trainers.inference.predict import IMAGE_SUFFIXES, build_pipeline, json_ready
from trainers.inference.saliency import COLORMAP, colormap, figure_and_maps, overlay

logger = logging.getLogger(__name__)

DEFAULT_MODEL, DEFAULT_COMPARE = DEFAULT_DEMO_MODEL, DEFAULT_DEMO_COMPARE  # what the README's main job writes
# Largest image accepted (width x height): 20 MP covers digital radiographs (up to ~4,300 x 3,500 px) while keeping
# the decoded image and its seven full-size maps (7 x 4 bytes per pixel) well under a few GB. Checked on the
# header, before any decoding; the upload itself is capped at MAX_UPLOAD_SIZE by the server.
MAX_IMAGE_PIXELS = 20_000_000
MAX_UPLOAD_SIZE = "20mb"
# Bounded concurrency: requests run at most this many at once (CPU-bound); others wait in a queue of this length.
CONCURRENCY_LIMIT = 2
QUEUE_SIZE = 64
MAP_SIDE = 512  # long side of the Grad-CAM pictures kept for the step selector
OPT_IN_CACHE_SIZE = 2  # visitor-named checkpoints kept loaded with --allow-any-model-path
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
OOD_BANNER = "This image is unlike the images this model was trained on; its answers are unreliable."

# Plain-language labels of the default schema's steps (a custom schema's steps keep their own names).
PLAIN_LABELS = {
    "Detection": "Anything abnormal in the lungs?",
    "Lesion distribution": "How is it spread?",
    "Radiographic pattern": "What does it look like?",
    "Anatomical location": "Where is it?",
    "Morphologic feature": "Its shape and edges",
    "Secondary effects": "Other effects on the chest",
    "Diagnosis": "Most likely diagnosis",
}
# Result and step fields drawn specially; any other field is listed generically.
KNOWN_RESULT_FIELDS = {"steps", "chain", "violations", "is_consistent", "probability_method", "image_size", "maps",
                       "consistent_chain", "changed_steps", "untrained_steps", "out_of_distribution",
                       "unresolved_contradiction", "image", "model", "trained_on", "test_accuracy", "reliable",
                       "warnings", "refused", "rules_checked"}
KNOWN_STEP_FIELDS = {"step", "name", "question", "answer", "label", "score", "probabilities", "is_na",
                     "consistent_answer", "consistent_label", "changed", "trained"}
UNTRAINED = "unknown (not trained)"


def _colour_bar_css() -> str:
    stops = ", ".join(f"rgb({', '.join(str(round(255 * c)) for c in colormap(COLORMAP)(x)[:3])}) {100 * x:.0f}%"
                      for x in np.linspace(0, 1, 9))
    return f"linear-gradient(to right, {stops})"


CSS = """
.stepcot-columns {display: flex; gap: 16px; flex-wrap: wrap;}
.stepcot-model {flex: 1 1 340px; min-width: 0; max-width: 100%; box-sizing: border-box;}
.stepcot-model h3 {margin: 4px 0 2px 0;}
.stepcot-trained {color: #4b5563; font-size: 0.85em; margin-bottom: 6px;}
.stepcot-unreliable .stepcot-steps, .stepcot-unreliable .stepcot-flags {opacity: 0.45; filter: grayscale(1);}
.stepcot-banner {background: #fef3c7; color: #78350f; border: 2px solid #d97706; border-radius: 8px;
  padding: 10px 14px; font-weight: 700; margin-bottom: 10px;}
.stepcot-banner.refused {background: #fee2e2; color: #7f1d1d; border-color: #dc2626;}
.stepcot-banner .why {font-weight: 400; font-size: 0.85em;}
.stepcot-steps {list-style: none; padding: 0; margin: 0;}
.stepcot-step {display: grid; grid-template-columns: minmax(0, 1fr) auto; gap: 0 8px; padding: 5px 2px;
  border-bottom: 1px solid #e5e7eb;}
.stepcot-step .label {color: #4b5563; font-size: 0.85em; grid-column: 1 / -1;}
.stepcot-step .answer {font-weight: 600; overflow-wrap: anywhere;}
.stepcot-step .score {font-size: 0.85em; color: #374151; white-space: nowrap;}
.stepcot-step details {grid-column: 1 / -1; font-size: 0.8em;}
.stepcot-bar-row {display: flex; align-items: center; gap: 6px; line-height: 1.3;}
.stepcot-bar-row .option {flex: 0 1 140px; min-width: 0; overflow: hidden; text-overflow: ellipsis;
  white-space: nowrap;}
.stepcot-bar-row .track {flex: 1 1 60px; background: #eef0f3; border-radius: 3px; height: 8px;}
.stepcot-bar-row .fill {background: #3b82f6; height: 8px; border-radius: 3px;}
.stepcot-bar-row .value {flex: 0 0 34px; text-align: right;}
.stepcot-badge {display: inline-block; border-radius: 4px; padding: 0 6px; font-size: 0.75em; margin-left: 6px;}
.stepcot-badge.na {background: #e5e7eb; color: #374151;}
.stepcot-badge.changed {background: #fef3c7; color: #92400e;}
.stepcot-badge.extra {background: #e0e7ff; color: #3730a3;}
.stepcot-flags {border-radius: 8px; padding: 6px 10px; margin: 6px 0;}
.stepcot-flags.bad {background: #fee2e2; color: #7f1d1d;}
.stepcot-flags.good {background: #f0fdf4; color: #14532d; font-size: 0.85em;}
.stepcot-flags ul {margin: 2px 0 0 0; padding-left: 18px;}
.stepcot-chain {font-size: 0.85em; margin: 6px 0; overflow-wrap: anywhere;}
.stepcot-error {background: #fee2e2; color: #7f1d1d; border-radius: 8px; padding: 8px 12px; font-weight: 600;}
.stepcot-info {color: #555; font-size: 0.85em;}
.stepcot-colourbar {height: 10px; border-radius: 3px; background: COLOURBAR;}
.stepcot-colourbar-labels {display: flex; justify-content: space-between; font-size: 0.75em; color: #4b5563;}
#stepcot-examples .thumbnail-item {max-width: 96px;}
@media (max-width: 640px) {
  #stepcot-step label, #stepcot-map-model label {padding: 3px 8px; font-size: 0.85em;}
  .stepcot-banner {padding: 8px 10px;}
}
"""


class DemoError(ValueError):
    """A problem with the visitor's input, shown in the page as one line."""


# ---------------------------------------------------------------------------------------------------------------
# models


@dataclass
class ServedModel:
    """One model the demo serves: its label in the page and API, its pipeline and what it was trained on."""

    label: str
    pipe: object
    trained_on: str
    test_accuracy: float | None = None


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


def training_summary(source: str, config) -> tuple[str, float | None]:
    """('Trained on ...', test accuracy or None) from the checkpoint's model card (README.md: dataset, synthetic
    or real, mean test accuracy over steps) and config (number of training images)."""
    card = Path(source) / "README.md"
    text = card.read_text(encoding="utf-8", errors="replace") if card.is_file() else ""
    statistics = getattr(config, "embedding_statistics", None) or {}
    counts = [c for c in (getattr(config, "step_training_counts", None) or []) if c]
    images = statistics.get("num_train") or (max(counts) if counts else None)
    if "synthetic-data" in text or "synthetic stepcot demo" in text:
        data = "synthetic radiograph-like images (the stepcot demo set), not real X-rays"
    else:
        named = re.search(r"^datasets:\s*\n\s*-\s*(\S+)", text, re.MULTILINE)
        data = named.group(1) if named else None
    accuracy = re.search(r"Mean over steps: accuracy ([0-9.]+)", text)
    if data is None and images is None:
        return "Training data: not recorded in this checkpoint.", None
    line = f"Trained on {f'{images:,} ' if images else ''}{data or 'images (dataset not recorded)'}"
    return line + ".", float(accuracy.group(1)) if accuracy else None


def _label(pipe, taken: list[str], source: str) -> str:
    kind = "Student" if pipe.model.config.model_type == "stepcot_student" else "Teacher"
    return kind if kind not in taken else f"{kind} ({Path(source).name or source})"


def load_served_models(sources, device: str = "cpu") -> list[ServedModel]:
    """Load the models the demo serves (once, at start-up); DemoError naming a source that is not a checkpoint."""
    served: list[ServedModel] = []
    for source in [s.strip() for s in sources if s and s.strip()]:
        pipe = load_demo_pipeline(source, device)
        trained_on, accuracy = training_summary(source, pipe.model.config)
        served.append(ServedModel(_label(pipe, [m.label for m in served], source), pipe, trained_on, accuracy))
    if not served:
        raise DemoError("no model to serve: pass --model FOLDER (and optionally --compare FOLDER)")
    return served


class ModelChoice:
    """The served models, chosen by label. A name that is not a label is refused without touching the file
    system, unless the operator allowed any model path: then it is loaded (keyed by its resolved path, so
    spellings of one folder share one copy; at most OPT_IN_CACHE_SIZE kept; no lock shared between models)."""

    def __init__(self, served: list[ServedModel], allow_any_model_path: bool = False, device: str = "cpu"):
        self.served = {model.label: model for model in served}
        self.allow_any_model_path = allow_any_model_path
        self.device = device
        self._extra: OrderedDict[str, ServedModel] = OrderedDict()
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()  # held only to look up or insert, never while loading

    @property
    def labels(self) -> list[str]:
        return list(self.served)

    def choose(self, names) -> list[ServedModel]:
        names = [names] if isinstance(names, str) else list(names or [])
        names = [str(n).strip() for n in names if str(n).strip()] or self.labels
        chosen = []
        for name in dict.fromkeys(names):
            if name in self.served:
                chosen.append(self.served[name])
            elif self.allow_any_model_path:
                chosen.append(self._load_extra(name))
            else:
                raise DemoError(f"unknown model {name[:80]!r}: this demo serves {', '.join(self.labels)}")
        return chosen

    def _load_extra(self, source: str) -> ServedModel:
        path = Path(source).expanduser()
        key = str(path.resolve()) if path.exists() else source
        with self._guard:
            if key in self._extra:
                self._extra.move_to_end(key)
                return self._extra[key]
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # one load per checkpoint at a time; other checkpoints and requests are not blocked
            with self._guard:
                if key in self._extra:
                    return self._extra[key]
            pipe = load_demo_pipeline(key, self.device)
            trained_on, accuracy = training_summary(key, pipe.model.config)
            model = ServedModel(f"{_label(pipe, [], key)} ({Path(key).name or key})", pipe, trained_on, accuracy)
            with self._guard:
                self._extra[key] = model
                while len(self._extra) > OPT_IN_CACHE_SIZE:
                    self._extra.popitem(last=False)
                self._locks.pop(key, None)
            return model


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


def sanity_problems(path) -> list[str]:
    """Why an image (already through `check_image_file`) cannot be a chest radiograph, by the pipeline's own gate
    (`refusal_reason`: too small, extremely elongated, in colour, blank), checked before any model runs on the
    header size and a draft-decoded thumbnail of at most 256 px."""
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
        try:
            image.draft("RGB", (256, 256))
            image.thumbnail((256, 256))
            rgb = np.asarray(image.convert("RGB"))
        except OSError:  # truncated data: the pipeline reports it in one line
            rgb = None
    if rgb is None:
        problem = refusal_reason(height, width, 0.0, MIN_GREY_STD)  # size and shape only
    else:
        problem = refusal_reason(height, width, *image_statistics(rgb))
    return [problem] if problem else []


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


def _readable(key: str) -> str:
    return key.replace("_", " ").capitalize()


def plain_label(step: dict) -> str:
    return PLAIN_LABELS.get(step["name"], step["name"])


def _probability_bars(step: dict) -> str:
    rows = []
    for option, probability in step["probabilities"].items():
        rows.append(
            f'<div class="stepcot-bar-row"><span class="option" title="{_escape(option)}">{_escape(option)}'
            f'</span><span class="track"><div class="fill" style="width:{100 * probability:.1f}%"></div></span>'
            f'<span class="value">{probability:.2f}</span></div>'
        )
    return "".join(rows)


def render_step(step: dict) -> str:
    head = (f'<li class="stepcot-step" data-step="{_escape(step["step"])}">'
            f'<span class="label" title="{_escape(step["question"])}">{_escape(step["step"])}. '
            f'{_escape(plain_label(step))}</span>')
    if step.get("trained") is False:  # no training labels: the head's output is noise, never shown as an answer
        return f'{head}<span class="answer stepcot-info">{UNTRAINED}</span><span></span></li>'
    badges = '<span class="stepcot-badge na">N/A</span>' if step.get("is_na") else ""
    for key, value in step.items():  # fields added by newer pipelines
        if key not in KNOWN_STEP_FIELDS:
            badges += (f'<span class="stepcot-badge extra">{_escape(_readable(key))}: '
                       f'{_escape(_format_value(value))}</span>')
    if step.get("changed"):
        badges += (f'<span class="stepcot-badge changed">changed by consistent decoding to '
                   f'{_escape(step["consistent_answer"])}</span>')
    return (f'{head}<span class="answer">{_escape(step["answer"])}{badges}</span>'
            f'<span class="score">p = {step["score"]:.2f}</span>'
            f"<details><summary>all answers</summary>{_probability_bars(step)}</details></li>")


def render_model(entry: dict) -> str:
    """One model's column: name, what it was trained on, contradictions, its chain as compact steps."""
    violations = entry.get("violations") or []
    if violations:
        items = "".join(f"<li>{_escape(v.get('message', v))}</li>" for v in violations)
        flags = (f'<div class="stepcot-flags bad"><b>{len(violations)} contradiction(s) between the steps</b>'
                 f"<ul>{items}</ul></div>")
    elif entry.get("rules_checked") == 0:
        flags = '<div class="stepcot-info">Contradictions not checked: no consistency rule applies here.</div>'
    else:
        flags = '<div class="stepcot-flags good">The steps do not contradict each other.</div>'
    notes = []
    if entry.get("changed_steps"):
        notes.append(f"Consistent decoding changed: {', '.join(entry['changed_steps'])}.")
    elif "consistent_chain" in entry:
        notes.append("Consistent decoding changed nothing.")
    if entry.get("unresolved_contradiction"):
        notes.append("Consistent decoding could not remove every contradiction.")
    if entry.get("untrained_steps"):
        notes.append(f"Not trained (no answer): {', '.join(entry['untrained_steps'])}.")
    notes += [f"{_readable(key)}: {_format_value(value)}" for key, value in entry.items()
              if key not in KNOWN_RESULT_FIELDS and key != "unreliable"]
    notes_html = "".join(f'<div class="stepcot-info">{_escape(note)}</div>' for note in notes)
    accuracy = entry.get("test_accuracy")
    trained = _escape(entry.get("trained_on", ""))
    if accuracy is not None:
        trained += f" Test accuracy (mean over steps): {accuracy:.1%}."
    unreliable = " stepcot-unreliable" if entry.get("unreliable") else ""
    steps = "".join(render_step(step) for step in entry["steps"])
    return (f'<div class="stepcot-model{unreliable}" data-model="{_escape(entry["model"])}">'
            f'<h3>{_escape(entry["model"])}</h3><div class="stepcot-trained">{trained}</div>{flags}'
            f'<ol class="stepcot-steps">{steps}</ol>{notes_html}'
            f'<div class="stepcot-info">Probabilities: {_escape(entry.get("probability_method", ""))}</div></div>')


def render_banner(data: dict) -> str:
    flagged = [m for m in data["models"] if m.get("unreliable")]
    if not flagged:
        return ""
    details = "; ".join(f"{m['model']}: distance {m['out_of_distribution']['distance']:.1f}, typical up to "
                        f"{m['out_of_distribution']['threshold']:.1f}" for m in flagged)
    return (f'<div class="stepcot-banner" role="alert">{_escape(OOD_BANNER)}'
            f'<div class="why">{_escape(details)}</div></div>')


def render_refusal(name: str, problems: list[str]) -> str:
    return (f'<div class="stepcot-banner refused" role="alert">{_escape(name)} does not look like a chest '
            f'radiograph, so it is not answered: {_escape("; ".join(problems))}.</div>')


def render_error(message: str) -> str:
    return f'<div class="stepcot-error" role="alert">{_escape(message)}</div>'


def render_result(data: dict) -> str:
    return f'<div class="stepcot-columns">{"".join(render_model(entry) for entry in data["models"])}</div>'


# ---------------------------------------------------------------------------------------------------------------
# one analysis


class ImageRefused(DemoError):
    """The image failed the sanity gate; `problems` lists why."""

    def __init__(self, name: str, problems: list[str]):
        super().__init__(f"{name} does not look like a chest radiograph: {'; '.join(problems)}")
        self.name, self.problems = name, problems


def analyse(image_path, models: list[ServedModel], consistent: bool = False, maps: bool = True):
    """Run the chosen models on one image. Returns (data, pictures): `data` is the JSON result ({image, unreliable,
    models: [{model, trained_on, test_accuracy, unreliable, ...pipeline result}]}); `pictures` maps each model's
    label to [the radiograph, its seven Grad-CAM overlays] (empty without `maps`)."""
    check_image_file(image_path)
    name = Path(image_path).name
    problems = sanity_problems(image_path)
    if problems:
        raise ImageRefused(name, problems)
    data, pictures = {"image": name, "unreliable": False, "models": []}, {}
    for model in models:
        try:
            result = model.pipe(str(image_path), maps=maps, consistent=consistent, maps_max_side=MAP_SIDE)
        except (ValueError, OSError) as error:  # decoding problems of the image, one line each
            raise DemoError(str(error).replace(str(image_path), name)) from None
        if result.get("refused"):  # the pipeline's own sanity gate: no answers to show
            raise ImageRefused(name, [result["refused"]])
        if maps:
            picture, step_maps = figure_and_maps(str(image_path), result)
            pictures[model.label] = [picture] + [overlay(picture, saliency) for saliency in step_maps]
        ood = result.get("out_of_distribution") or {}
        entry = {"model": model.label, "trained_on": model.trained_on, "test_accuracy": model.test_accuracy,
                 "unreliable": bool(ood.get("flagged")) or result.get("reliable") is False,
                 **json_ready(result, name, None)}
        entry.pop("image")
        data["models"].append(entry)
    data["unreliable"] = any(entry["unreliable"] for entry in data["models"])
    return data, pictures


def respond(image_file, names, consistent: bool, choice: ModelChoice, maps: bool = True):
    """What the page shows for one request: (message html, result html, pictures, data). Never raises: input
    problems become a one-line message or the refusal banner, unexpected errors too (traceback in the server
    log)."""
    try:
        data, pictures = analyse(image_file, choice.choose(names), bool(consistent), maps)
        return render_banner(data), render_result(data), pictures, data
    except ImageRefused as refused:
        return render_refusal(refused.name, refused.problems), "", {}, None
    except DemoError as error:
        return render_error(str(error)), "", {}, None
    except Exception as error:  # noqa: BLE001
        logger.exception("stepcot demo: unexpected error")
        return render_error(f"unexpected error ({type(error).__name__}): {error}"), "", {}, None


# ---------------------------------------------------------------------------------------------------------------
# the app


def example_images(folder) -> list[str]:
    """Example radiographs: the image files of `folder` (sorted)."""

    folder = Path(folder)
    return sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []


def write_synthetic_examples(folder, count: int = 3, size: int = 320) -> list[str]:
    """Render a few synthetic radiographs (the demo data's generator) as examples."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, diagnosis in enumerate(["Pneumothorax", "Effusion", "Pneumonia", "Normal"][:count]):
        path = folder / f"synthetic_{index + 1}_{diagnosis.lower().replace(' ', '_')}.png"
        if not path.is_file():
            try:
                _, image = make_demo_example(index, 0, size, f"EX-{index}", diagnosis)
            except (KeyError, ValueError, AssertionError):  # a diagnosis this schema does not have
                continue
            Image.fromarray(image, mode="L").save(path)
        paths.append(str(path))
    return paths


def _thumbnails(paths: list[str], folder: Path, side: int = 160) -> list[tuple[str, str]]:
    """(small PNG copy, caption) per example image: the page loads thumbnails, the analysis the original."""
    from PIL import Image

    thumbnails = []
    for index, path in enumerate(paths):
        with Image.open(path) as image:
            image.draft("L", (side, side))
            image = image.convert("L")
            image.thumbnail((side, side))
            target = folder / f"example_{index}.png"
            image.save(target)
        thumbnails.append((str(target), Path(path).stem.replace("_", " ")[:40]))
    return thumbnails


def step_choices(data: dict | None, label: str | None) -> list[tuple[str, int]]:
    """The Grad-CAM step selector's choices: the radiograph, then each step with its answer."""
    choices = [("Radiograph only", 0)]
    entry = next((m for m in (data or {}).get("models", []) if m["model"] == label), None)
    for step in entry["steps"] if entry else []:
        answer = step["answer"] if step.get("trained") is not False else UNTRAINED
        choices.append((f"{step['step']}. {plain_label(step)} — {answer}", step["step"]))
    return choices


INTRO = """# Step-CoT: stepwise chest X-ray reasoning
Upload a frontal chest X-ray or click an example. Each model answers seven questions in turn (is anything abnormal
→ … → the most likely diagnosis); contradictions between its answers are flagged, and *consistent decoding* shows
the most probable chain without them. Choose a step under the image to see which regions drove its answer
(Grad-CAM). **A research demo, not a medical device.**"""


def build_demo(model: str = DEFAULT_MODEL, compare: str | None = DEFAULT_COMPARE, examples: list[str] | None = None,
               device: str = "cpu", allow_any_model_path: bool = False, served: list[ServedModel] | None = None):
    """The Gradio Blocks app serving `model` (and `compare`), loaded now, once. Visitors choose among them by
    label; `allow_any_model_path=True` also lets them name any checkpoint folder or Hub id the server can read."""
    import gradio as gr
    from gradio import FileData

    choice = ModelChoice(served or load_served_models([model, compare or ""], device), allow_any_model_path, device)
    labels = choice.labels
    work_dir = Path(tempfile.mkdtemp(prefix="stepcot-demo-"))
    example_paths = list(examples or [])
    thumbnails = _thumbnails(example_paths, work_dir)

    def run(image_file, names, consistent, other=""):
        names = list(names or []) + ([other.strip()] if other and other.strip() else [])
        if not names:
            names = labels
        message, page, pictures, data = respond(image_file, names, consistent, choice)
        first = next(iter(pictures), None)
        return (message, page, pictures[first][0] if first else None,
                gr.update(choices=step_choices(data, first), value=0),
                gr.update(choices=list(pictures) or labels, value=first, visible=len(pictures) > 1),
                pictures, data, image_file, data)

    def run_if_image(image_file, *rest):  # a cleared upload clears the page instead of complaining
        if image_file:
            return run(image_file, *rest)
        return "", "", None, gr.update(choices=step_choices(None, None), value=0), gr.update(), {}, None, None, None

    def run_example(names, consistent, *rest, evt: gr.SelectData):
        return run(example_paths[evt.index], names, consistent, *rest)

    def show(pictures, label, step):
        pictures = pictures or {}
        if label not in pictures:
            return None
        return pictures[label][min(int(step or 0), len(pictures[label]) - 1)]

    def show_model(data, pictures, label):
        return show(pictures, label, 0), gr.update(choices=step_choices(data, label), value=0)

    def predict(image: FileData, models: list[str] | None = None, consistent: bool = False) -> dict:
        """Answer the seven Step-CoT steps for one chest X-ray.

        Args:
            image: the chest X-ray (PNG, JPEG, ...), e.g. gradio_client.handle_file("chest.png").
            models: labels of the served models to run (default: all of them).
            consistent: also decode the most probable chain without contradictions.
        Returns:
            {image, unreliable, models: [{model, trained_on, test_accuracy, unreliable, steps, chain, ...}]}.
        """
        path = image.get("path") if isinstance(image, dict) else getattr(image, "path", image)
        try:
            data, _ = analyse(path, choice.choose(models), bool(consistent), maps=False)
        except DemoError as error:
            raise gr.Error(str(error), print_exception=False) from None
        return data

    # gradio reads the types of the API's parameters from the annotations (strings under `from __future__`).
    predict.__annotations__ = {"image": FileData, "models": list[str] | None, "consistent": bool, "return": dict}

    with gr.Blocks(title="Step-CoT chest X-ray VQA", analytics_enabled=False) as demo:
        gr.Markdown(INTRO)
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=280):
                image_file = gr.File(label="Chest X-ray (PNG, JPEG, ...)", type="filepath", elem_id="stepcot-upload",
                                     height=110)
                models_box = gr.CheckboxGroup(choices=labels, value=labels, label="Models",
                                              elem_id="stepcot-models", visible=len(labels) > 1)
                other_box = gr.Textbox(label="Other checkpoint folder or Hub id (the operator allowed any path)",
                                       elem_id="stepcot-other", visible=allow_any_model_path)
                consistent = gr.Checkbox(label="Consistent decoding (the most probable chain without "
                                         "contradictions)", value=False, elem_id="stepcot-consistent")
                button = gr.Button("Answer the seven steps", variant="primary", elem_id="stepcot-run")
                gallery = gr.Gallery(value=thumbnails or None, label="Examples (click one)", columns=4,
                                     allow_preview=False, height=150, object_fit="contain",
                                     elem_id="stepcot-examples", visible=bool(thumbnails), interactive=False)
            with gr.Column(scale=3, min_width=280):
                message = gr.HTML(elem_id="stepcot-message")
                picture = gr.Image(label="Radiograph and Grad-CAM", interactive=False, elem_id="stepcot-picture",
                                   height=380, show_label=True)
                gr.HTML('<div class="stepcot-colourbar"></div><div class="stepcot-colourbar-labels">'
                        "<span>no evidence</span><span>evidence for the answer →</span><span>strongest</span></div>",
                        elem_id="stepcot-colourbar")
                map_model = gr.Radio(choices=labels, value=labels[0], label="Grad-CAM of", visible=False,
                                     elem_id="stepcot-map-model")
                step = gr.Radio(choices=step_choices(None, None), value=0, label="Show the evidence for step",
                                elem_id="stepcot-step")
        result = gr.HTML(elem_id="stepcot-result")
        with gr.Accordion("Result as JSON (also from the API: /predict)", open=False):
            json_view = gr.JSON(elem_id="stepcot-json")
        pictures = gr.State({}, time_to_live=900)  # per visitor; dropped with the session
        data_state = gr.State(None, time_to_live=900)
        current = gr.State(None, time_to_live=900)  # the image shown: an upload or a clicked example
        inputs = [image_file, models_box, consistent, other_box]
        outputs = [message, result, picture, step, map_model, pictures, data_state, current, json_view]
        private = dict(api_visibility="private")
        button.click(run, [current, *inputs[1:]], outputs, **private)
        image_file.change(run_if_image, inputs, outputs, **private)  # an upload, or a cleared upload
        consistent.input(run_if_image, [current, *inputs[1:]], outputs, **private)
        gallery.select(run_example, [models_box, consistent, other_box], outputs, **private)
        step.change(show, [pictures, map_model, step], picture, queue=False, **private)
        map_model.input(show_model, [data_state, pictures, map_model], [picture, step], queue=False, **private)
        gr.api(predict, api_name="predict")
    demo.queue(default_concurrency_limit=CONCURRENCY_LIMIT, max_size=QUEUE_SIZE)
    demo.stepcot_models = choice
    return demo


def launch(demo, host: str = "127.0.0.1", port: int | None = None, **kwargs):
    return demo.launch(server_name=host, server_port=port, max_file_size=MAX_UPLOAD_SIZE,
                       css=CSS.replace("COLOURBAR", _colour_bar_css()), quiet=True, footer_links=[], **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# a Hugging Face Space

# The packages app.py imports, copied whole (a partial copy would shadow an installed stepcot with half of it).
SPACE_PACKAGES = ["modeling_stepcot", "trainers", "dataset_script", "model_cards"]
SPACE_REQUIREMENTS = ["transformers", "safetensors", "huggingface_hub", "numpy", "pillow", "matplotlib", "gradio"]
SPACE_APP = '''"""Step-CoT chest X-ray demo (a Hugging Face Space written by `stepcot demo --write-space`).

Serves the models in models/ and nothing else; `python app.py` binds where a Space expects
($GRADIO_SERVER_NAME / $GRADIO_SERVER_PORT, default 0.0.0.0:7860).
"""

import os
from pathlib import Path

from trainers.inference.demo_app import build_demo, example_images, launch

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


__all__ = [
    "DemoError",
    "ModelChoice",
    "ServedModel",
    "analyse",
    "build_demo",
    "check_image_file",
    "launch",
    "load_served_models",
    "render_result",
    "respond",
    "sanity_problems",
    "write_space",
]
