"""`stepcot predict`: answer the seven Step-CoT steps for chest X-ray images, with stepwise attention maps.

    stepcot predict chest1.png chest2.jpeg --model outputs/demo/student --maps maps/ --consistent
    stepcot predict xrays/ --model outputs/demo/teacher --json > predictions.json

prints one table per image (step, answer, probability, N/A), the chain as one line and any contradictions
between steps; `--maps OUT` writes OUT/<image>/step{1..7}_<name>.png (Grad-CAM of the predicted answer over the
image) and OUT/<image>/summary.png. `--consistent` also shows a chain that breaks no consistency rule, changing
only answers with p < 0.9 (`ChainChecker.repair`), and which steps it changed (the per-step predictions are always
reported as they are). Steps the model had no training labels for are shown as unknown and never checked.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

import modeling_stepcot  # noqa: F401  (registers the Step-CoT classes with the Auto API)
from modeling_stepcot.pipeline_stepcot import TASK, StepCoTVQAPipeline, load_image
from trainers.choices import EVAL_BATCH_SIZE, MAPS_BATCH_SIZE
from trainers.inference.saliency import FIGURE_MAX_SIDE, save_step_maps
from trainers.model_loading import load_model

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"}


# ---------------------------------------------------------------------------------------------------------------
# loading


def build_pipeline(model, device: str | None = None):
    """The `stepcot-vqa` pipeline around a loaded model (or a model folder, loaded by
    `trainers.model_loading.load_model`: this package's classes, never the checkpoint's code)."""
    from transformers import pipeline

    if isinstance(model, (str, Path)):
        model = load_model(model)
    return pipeline(TASK, model=model, device=device or "cpu")


def add_pipeline_to_checkpoint(folder) -> Path:
    """Make a saved model folder carry the pipeline as remote code: copies `pipeline_stepcot.py` (and its sibling
    imports) next to the model and adds `custom_pipelines` to config.json, so that
    `pipeline(model=FOLDER_OR_REPO, trust_remote_code=True)` works without this package."""
    from transformers.dynamic_module_utils import custom_object_save

    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: save the model there first")
    custom_object_save(StepCoTVQAPipeline, folder)
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["custom_pipelines"] = {
        TASK: {"impl": f"pipeline_stepcot.{StepCoTVQAPipeline.__name__}", "pt": ["AutoModel"], "type": "image"}
    }
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return config_file


def expand_images(inputs: list[str]) -> list[Path]:
    """Image files from the arguments; a folder contributes its image files (sorted, not recursive)."""
    paths = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise FileNotFoundError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in the folder {path}")
            paths.extend(found)
        else:
            paths.append(path)
    return paths


def check_images(paths: list[Path]) -> None:
    """Fail before any model work if an input is missing or not an image (all problems in one message)."""
    problems = []
    for path in paths:
        try:
            load_image(path).close()
        except (FileNotFoundError, ValueError) as error:
            problems.append(str(error))
    if problems:
        raise ValueError(f"cannot read {len(problems)} input image(s): " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------------------------
# output


UNKNOWN_ANSWER = "unknown (not trained)"


def format_table(name: str, result: dict, model_label: str) -> str:
    consistent = "consistent_chain" in result
    header = f"{'#':>2}  {'Step':<22} {'Answer':<22} {'p':>5}  N/A"
    if consistent:
        header += f"   {'Consistent answer':<22}"
    lines = [f"{name}  [{model_label}; probabilities: {result['probability_method']}]"]
    if result.get("refused"):
        lines += ["!" * 100, f"!! REFUSED, NOT ANSWERED: {result['refused']}.", "!" * 100]
        return "\n".join(lines)
    unreliable = result.get("reliable") is False
    if unreliable:
        lines += ["!" * 100] + [f"!! UNRELIABLE: {warning}." for warning in result.get("warnings", [])]
        lines += ["!" * 100]
    lines += [header, "-" * len(header)]
    for step in result["steps"]:
        if step.get("trained") is False:  # an untrained head's output is noise: never shown as an answer
            lines.append(f"{step['step']:>2}  {step['name']:<22} {UNKNOWN_ANSWER:<22} {'':>5}  {'':<3}")
            continue
        answer = f"{step['answer']} (?)" if unreliable else step["answer"]
        line = (f"{step['step']:>2}  {step['name']:<22} {answer:<22} {step['score']:5.2f}  "
                f"{'yes' if step['is_na'] else '-':<3}")
        if consistent:
            line += f"   {step['consistent_answer']:<22}" + ("  (changed)" if step["changed"] else "")
        lines.append(line)
    lines.append(f"Chain: {result['chain'] or '(no trained step)'}")
    untrained = result.get("untrained_steps") or []
    if untrained:
        lines.append(f"Not trained (no labels in the training data; not shown, not checked): {', '.join(untrained)}")
    if result["violations"]:
        lines.append(f"Contradictions ({len(result['violations'])}):")
        lines += [f"  - {v['message']} [{v['rule']}: {' / '.join(v['steps'])}]" for v in result["violations"]]
    elif untrained and len(untrained) == len(result["steps"]) - 1:
        lines.append("Contradictions: not checked (one trained step)")
    elif result.get("rules_checked") == 0:
        lines.append("Contradictions: not checked (no consistency rule applies to this model's steps)")
    else:
        lines.append("Contradictions: none" + (" among the trained steps" if untrained else ""))
    if consistent:
        changed = ", ".join(result["changed_steps"]) or "none"
        note = "; a contradiction between confident steps is left as it is" if result.get(
            "unresolved_contradiction") else ""
        lines.append(f"Consistent chain: {result['consistent_chain']} (changed steps: {changed}{note})")
    ood = result.get("out_of_distribution")
    if ood and ood["flagged"]:
        lines.append(f"!! UNRELIABLE (answers marked (?)): this image lies far from the training images (embedding "
                     f"distance {ood['distance']:.2f} > {ood['threshold']:.2f}, the {100 * ood['quantile']:g}th "
                     "percentile of held-out images like the training ones).")
    return "\n".join(lines)


def json_ready(result: dict, image: Path, map_paths: dict | None) -> dict:
    out = {key: value for key, value in result.items() if key != "maps"}
    out["image"] = str(image)
    out["image_size"] = list(result["image_size"])
    if map_paths:
        out["maps"] = {"steps": [str(p) for p in map_paths["steps"]], "summary": str(map_paths["summary"])}
    return out


def _map_folders(paths: list[Path], out: Path) -> list[Path]:
    """One output folder per image, named by the image's stem (numbered when two images share a stem)."""
    stems = [p.stem for p in paths]
    return [out / (stem if stems.count(stem) == 1 else f"{index:03d}_{stem}") for index, stem in enumerate(stems)]


# ---------------------------------------------------------------------------------------------------------------
# command


def predict_images(pipe, paths: list[Path], maps_dir: Path | None = None, consistent: bool = False,
                   batch_size: int | None = None) -> list[tuple[dict, dict | None]]:
    """Run the pipeline over image files; with `maps_dir`, write each image's PNGs. Returns (result, map paths).

    Streams: one batch at a time goes through the pipeline, its maps are drawn and dropped before the next batch,
    and the maps are made at the figures' size (`FIGURE_MAX_SIDE`), not the radiograph's: memory stays flat over a
    folder of any length (full-resolution maps were 7 x 4 bytes per pixel, ~1.8 GB for one 8000 x 8000 image).
    `batch_size` defaults to `stepcot eval`'s (`EVAL_BATCH_SIZE`), or `MAPS_BATCH_SIZE` with maps."""
    folders = _map_folders(paths, maps_dir) if maps_dir is not None else [None] * len(paths)
    if batch_size is None:
        batch_size = MAPS_BATCH_SIZE if maps_dir is not None else EVAL_BATCH_SIZE
    batch_size = max(1, min(batch_size, len(paths)))
    options = {"maps": True, "maps_max_side": FIGURE_MAX_SIDE} if maps_dir is not None else {}
    output = []
    for start in range(0, len(paths), batch_size):
        batch = paths[start : start + batch_size]
        results = _run_naming_the_file(pipe, batch, consistent=consistent, **options)
        for path, result, folder in zip(batch, results, folders[start : start + batch_size]):
            drawn = folder is not None and not result.get("refused")  # a refused image has no answers to map
            written = save_step_maps(path, result, folder) if drawn else None
            result.pop("maps", None)  # drawn, not kept
            output.append((result, written))
        del results
        if maps_dir is not None:
            gc.collect()  # the batch's closed figures and outputs sit in reference cycles (~10 MB per image)
    return output


def _run_naming_the_file(pipe, batch: list[Path], **options) -> list[dict]:
    """The pipeline over one batch; a failure names the image it came from (found by running them one by one)."""
    try:
        return pipe([str(p) for p in batch], batch_size=len(batch), **options)
    except ValueError as error:
        if any(str(p) in str(error) for p in batch):
            raise
        for path in batch:
            try:
                pipe([str(path)], batch_size=1, **options)
            except ValueError as single:
                raise ValueError(f"{path}: {single}") from None
        raise


__all__ = ["add_pipeline_to_checkpoint", "build_pipeline", "predict_images"]
