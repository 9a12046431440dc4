"""The Step-CoT web demo, a Gradio app: upload a chest X-ray, see the seven-step chain of the served models side by
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

import logging
import re
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import modeling_stepcot  # noqa: F401  (registers the Step-CoT classes with the Auto API)
from dataset_script.synthetic import make_demo_example
from modeling_stepcot.pipeline_stepcot import MIN_GREY_STD, image_statistics, refusal_reason
from trainers.choices import DEFAULT_DEMO_COMPARE, DEFAULT_DEMO_MODEL
from trainers.inference.predict import IMAGE_SUFFIXES, build_pipeline, json_ready
from trainers.inference.saliency import figure_and_maps, overlay
from trainers.inference.web_demo_rendering import (
    CSS,
    INTRO,
    colour_bar_css,
    render_banner,
    render_error,
    render_refusal,
    render_result,
    step_choices,
)
from trainers.model_loading import load_model

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
                       css=CSS.replace("COLOURBAR", colour_bar_css()), quiet=True, footer_links=[], **kwargs)


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
]
