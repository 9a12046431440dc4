"""`transformers` pipeline for Step-CoT: chest X-ray image(s) in, the seven answered steps out, with calibrated
probabilities, a readable chain, consistency flags and (optionally) one Grad-CAM map per step
(`gradcam_stepcot`), and an out-of-distribution flag on the image embedding (`ood_stepcot`).

    >>> from transformers import pipeline
    >>> import modeling_stepcot                                  # registers the "stepcot-vqa" task
    >>> vqa = pipeline("stepcot-vqa", model="outputs/demo/student", device="cpu")
    >>> result = vqa("chest.png", maps=True, consistent=True)
    >>> result["chain"]
    'Detection: Decreased opacity → Lesion distribution: Focal → ... → Diagnosis: Pneumothorax'

A checkpoint that carries `custom_pipelines` in its config.json (see
`trainers.inference.predict.add_pipeline_to_checkpoint`) loads without this package:
`pipeline(model=DIR_OR_REPO, trust_remote_code=True)` (transformers then asks for `trust_remote_code=True` even
when this package is imported).

This file ships inside checkpoints (remote code): it imports only torch, numpy, PIL, transformers and its siblings.
"""

import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import Pipeline

from .chain_stepcot import DEFAULT_REPAIR_CONFIDENCE, ChainChecker
from .configuration_stepcot import NA_OPTION
from .gradcam_stepcot import stepwise_grad_cam, upsample_maps
from .ood_stepcot import embedding_distance, out_of_distribution
from .processing_stepcot import (
    MAX_IMAGE_PIXELS,
    image_processor_for_config,
    image_to_rgb,
    pixel_values_from_images,
    upright_size,
)

TASK = "stepcot-vqa"
UNCALIBRATED = "softmax (uncalibrated)"
CHAIN_SEPARATOR = " → "


def is_stepcot_config(config) -> bool:
    return str(getattr(config, "model_type", "")).startswith("stepcot") and hasattr(config, "step_options")


def step_temperatures(config) -> tuple[list[float], str]:
    """Per-step softmax temperatures stored by `trainers.evaluation.calibration.calibrate` in `config.calibration`,
    and the name of the method; all 1.0 ("softmax (uncalibrated)") when the model was never calibrated."""
    calibration = getattr(config, "calibration", None)
    if isinstance(calibration, dict) and calibration.get("method") == "temperature":
        temperatures = [float(t) for t in calibration["temperatures"]]
        if len(temperatures) != config.num_steps or not all(math.isfinite(t) and t > 0 for t in temperatures):
            raise ValueError(f"config.calibration has invalid temperatures {temperatures} "
                             f"(need {config.num_steps} finite positive values)")
        split = calibration.get("split")
        return temperatures, "temperature scaling" + (f" (fitted on {split})" if split else "")
    return [1.0] * config.num_steps, UNCALIBRATED


def format_chain(step_names, answers) -> str:
    """'Detection: Decreased opacity → Lesion distribution: Focal → … → Diagnosis: Pneumothorax'; steps whose
    answer is None (never trained) are left out."""
    return CHAIN_SEPARATOR.join(f"{name}: {answer}" for name, answer in zip(step_names, answers) if answer is not None)


# ---------------------------------------------------------------------------------------------------------------
# Sanity gate before the model: inputs no chest radiograph looks like are refused, not answered
# ---------------------------------------------------------------------------------------------------------------

MIN_IMAGE_SIDE = 32  # pixels: below this there is no anatomy to read
MAX_ASPECT_RATIO = 3.0  # long side / short side: chest films are about 1:1.4 at most
MAX_COLOUR_SPREAD = 20.0  # mean (max - min) over the RGB channels, in grey levels: radiographs are grey
MIN_GREY_STD = 2.0  # grey levels: a blank (near-constant) image


def image_statistics(rgb) -> tuple[float, float]:
    """(colour spread, grey standard deviation) of an 8-bit RGB image, in grey levels: the mean over pixels of the
    largest minus the smallest channel (0 for a grey image), and the spread of the grey values."""
    array = np.asarray(rgb, dtype=np.int16)
    spread = float((array.max(-1) - array.min(-1)).mean())
    return spread, float(array.mean(-1).std())


def refusal_reason(height: int, width: int, colour_spread: float, grey_std: float) -> str | None:
    """Why the model must not answer for this input (it looks like no radiograph it could read), or None."""
    if min(height, width) < MIN_IMAGE_SIDE:
        return f"the image is too small ({width} x {height} px; at least {MIN_IMAGE_SIDE} px a side is needed)"
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        return f"the aspect ratio {ratio:.1f}:1 is far from a chest radiograph's (at most {MAX_ASPECT_RATIO:g}:1)"
    if colour_spread > MAX_COLOUR_SPREAD:
        return (f"the image is in colour (mean channel spread {colour_spread:.0f} grey levels > "
                f"{MAX_COLOUR_SPREAD:g}); radiographs are greyscale")
    if grey_std < MIN_GREY_STD:
        return f"the image is blank (grey-level spread {grey_std:.1f} < {MIN_GREY_STD:g})"
    return None


# ---------------------------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------------------------


def load_image(image):
    """A PIL image (not yet decoded, so JPEG draft mode can still apply) from a path, PIL image or array, with a
    clear error for missing, unreadable or non-image files."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit below applies instead
                image = Image.open(path)
        except Image.DecompressionBombError:
            raise ValueError(f"{path} claims more than {MAX_IMAGE_PIXELS:,} pixels (decompression-bomb guard); "
                             "not decoded") from None
        except OSError as error:  # UnidentifiedImageError, or a header cut short
            raise ValueError(f"{path} is not a readable image file ({error})") from None
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            image.close()
            raise ValueError(f"{path} is {width} x {height} pixels, above the limit of {MAX_IMAGE_PIXELS:,} "
                             "(decompression-bomb guard); not decoded")
        return image
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (1, 3, 4)):
            raise ValueError(f"an image array must be (H, W) or (H, W, 1|3|4), got shape {image.shape}")
        return image
    raise TypeError(f"expected an image path, PIL image or numpy array, got {type(image).__name__}")


class StepCoTVQAPipeline(Pipeline):
    """Answers the seven Step-CoT steps for chest X-ray images with a Step-CoT teacher or student.

    Call arguments:
        images: a path, PIL image or numpy array, or a list of them (returns a list).
        maps (`bool`, default False): add `maps`, a (steps, H, W) float32 array in [0, 1] at the image's size:
            per step, Grad-CAM on the vision encoder's grid for the predicted answer.
        maps_max_side (`int`, optional): make the maps at most this many pixels on the long side (same aspect
            ratio) instead of the image's full size, e.g. for drawing (full-size maps of an 8000 x 8000 radiograph
            take ~1.8 GB).
        consistent (`bool`, default False): also decode a chain that breaks no consistency rule: only steps
            answered with probability < 0.9 may change, to the most probable consistent chain (exact search;
            `ChainChecker.repair`). The per-step predictions are kept; changed steps are flagged.
        batch_size (`int`): images per forward pass.

    Each result is a dict: `steps` (per step: `step`, `name`, `question`, `trained`, `answer`, `label`, `score`,
    `probabilities` {option: p}, `is_na`, and with `consistent=True`: `consistent_answer`, `consistent_label`,
    `changed`), `chain` (one readable line), `untrained_steps`, `violations` (broken consistency rules),
    `is_consistent`, `probability_method`, `image_size` (H, W), with `consistent=True`: `consistent_chain`,
    `changed_steps`, `unresolved_contradiction`; and `out_of_distribution` ({distance, threshold, flagged}) when
    the model recorded its training embeddings' statistics. `rules_checked`: how many consistency rules applied
    (0: the chain was not checked, e.g. a one-step schema). `reliable` (bool) and `warnings` (list of one-line
    reasons) say whether the answers can be used: False for an out-of-distribution image and for a refused one.

    A sanity gate runs before the answers are given: an image smaller than `MIN_IMAGE_SIDE`, with an aspect ratio
    beyond `MAX_ASPECT_RATIO`, in colour, or blank is refused (`refused` holds the reason; every answer is None).

    A step the model had no training labels for (`config.step_training_counts` 0) is unknown: `answer`, `label`,
    `score`, `probabilities` and `is_na` are None, it is left out of the chain and of the consistency rules.
    """

    _load_processor = None  # the checkpoint's saved StepCoTProcessor when present (optional)
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, model, *args, image_processor=None, processor=None, **kwargs):
        config = getattr(model, "config", None)
        if not is_stepcot_config(config) or not hasattr(model, "vision_encoder"):
            raise ValueError(f"the {TASK} pipeline needs a Step-CoT teacher or student; got a "
                             f"{type(model).__name__} (model_type {getattr(config, 'model_type', None)!r})")
        if image_processor is None:
            image_processor = getattr(processor, "image_processor", None) or image_processor_for_config(config)
        # The tokenizer of a saved processor is not needed (question tokens live in the model's buffers).
        super().__init__(model, *args, image_processor=image_processor, **kwargs)
        self.model.eval()
        self.checker = ChainChecker.from_config(config)
        self.temperatures, self.probability_method = step_temperatures(config)
        self.repair_confidence = DEFAULT_REPAIR_CONFIDENCE

    def _sanitize_parameters(self, maps=None, consistent=None, maps_max_side=None, **unused):
        if unused:
            raise TypeError(f"unexpected arguments for the {TASK} pipeline: {sorted(unused)}")
        forward, postprocess = {}, {}
        if maps is not None:
            forward["maps"] = bool(maps)
        if maps_max_side is not None:
            if isinstance(maps_max_side, bool) or not isinstance(maps_max_side, int) or maps_max_side < 1:
                raise ValueError(f"maps_max_side must be a positive integer, got {maps_max_side!r}")
            postprocess["maps_max_side"] = maps_max_side
        if consistent is not None:
            postprocess["consistent"] = bool(consistent)
        return {}, forward, postprocess

    def preprocess(self, image):
        image = load_image(image)
        if isinstance(image, np.ndarray):
            height, width = image.shape[:2]
        else:
            width, height = upright_size(image)  # from the header, before any draft-mode decoding
        size = int(self.model.config.image_size)
        try:
            rgb = image_to_rgb(image, size)
        except OSError as error:  # truncated or corrupt data surfaces only when decoding
            name = getattr(image, "filename", "") or "the image"
            raise ValueError(f"{name} could not be decoded ({error})") from None
        processor = self.image_processor
        pixel_values = pixel_values_from_images(rgb, size, processor.image_mean, processor.image_std)
        return {"pixel_values": pixel_values, "image_size": torch.tensor([[height, width]]),
                "image_statistics": torch.tensor([image_statistics(rgb)], dtype=torch.float64)}

    def _forward(self, model_inputs, maps=False):
        pixel_values = model_inputs["pixel_values"].to(self.model.dtype)
        outputs = {"image_size": model_inputs["image_size"], "image_statistics": model_inputs["image_statistics"]}
        statistics = getattr(self.model.config, "embedding_statistics", None)
        if maps:
            step_logits, grid_maps = stepwise_grad_cam(self.model, pixel_values)
            outputs["maps"] = grid_maps
            image_embeds = self.model.encode_images(pixel_values) if statistics else None
        else:
            image_embeds = self.model.encode_images(pixel_values)
            step_logits = self.model(image_embeds=image_embeds).step_logits
        if statistics:
            distances = embedding_distance(image_embeds.detach().float().cpu().numpy(), statistics)
            outputs["embedding_distance"] = torch.from_numpy(distances)  # (B,), batched like the logits
        width = max(logits.shape[-1] for logits in step_logits)
        # Padded with NaN (never a valid logit) so postprocess can cut each step back to its own options.
        outputs["logits"] = torch.stack(
            [F.pad(logits.float(), (0, width - logits.shape[-1]), value=float("nan")) for logits in step_logits], 1
        )
        return outputs

    def postprocess(self, model_outputs, consistent=False, maps_max_side=None):
        config = self.model.config
        trained = config.trained_steps
        logits = model_outputs["logits"][0]
        steps, log_probs, labels = [], [], []
        for step, options in enumerate(config.step_options):
            step_logits = logits[step, : len(options)].double() / self.temperatures[step]
            if not bool(torch.isfinite(step_logits).all()):
                raise ValueError(f"the model gave non-finite scores at step {step + 1} ({config.step_names[step]}); "
                                 "its weights or the input may be damaged")
            step_log_probs = torch.log_softmax(step_logits, -1)
            probabilities = step_log_probs.exp()
            label = int(probabilities.argmax())
            log_probs.append(step_log_probs.numpy())
            labels.append(label)
            entry = {"step": step + 1, "name": config.step_names[step], "question": config.step_questions[step],
                     "trained": trained[step]}
            if trained[step]:
                entry.update(answer=options[label], label=label, score=float(probabilities[label]),
                             probabilities={option: float(p) for option, p in zip(options, probabilities)},
                             is_na=options[label] == NA_OPTION)
            else:  # an untrained head's output is noise: no answer, no probabilities
                entry.update(answer=None, label=None, score=None, probabilities=None, is_na=None)
            steps.append(entry)
        image_size = tuple(int(v) for v in model_outputs["image_size"][0])
        refused = refusal_reason(*image_size, *(float(v) for v in model_outputs["image_statistics"][0]))
        if refused:  # no answer at all: the scores of an input like this mean nothing
            for entry in steps:
                entry.update(answer=None, label=None, score=None, probabilities=None, is_na=None)
            labels = None
        violations = self.checker.violations(labels) if labels is not None else []  # untrained steps left out
        result = {
            "steps": steps,
            "chain": format_chain(config.step_names, [s["answer"] for s in steps]),
            "untrained_steps": [s["name"] for s in steps if not s["trained"]],
            "is_consistent": not violations,
            "violations": violations,
            "rules_checked": 0 if refused else len(self.checker.rules),
            "probability_method": self.probability_method,
            "image_size": image_size,
            "refused": refused,
        }
        warnings = [f"refused: {refused}"] if refused else []
        if "embedding_distance" in model_outputs:
            ood = out_of_distribution(float(model_outputs["embedding_distance"].reshape(-1)[0]),
                                      config.embedding_statistics)
            result["out_of_distribution"] = ood
            if ood["flagged"] and not refused:
                warnings.append(f"out of distribution: the image lies far from the training images (distance "
                                f"{ood['distance']:.2f} > threshold {ood['threshold']:.2f}); the answers are "
                                "unreliable for it")
        result["reliable"] = not warnings
        result["warnings"] = warnings
        if refused:
            consistent = False  # nothing to decode
        if consistent:
            repaired = self.checker.repair(log_probs, self.repair_confidence)
            for step, label in enumerate(repaired["labels"]):
                if steps[step]["trained"]:
                    steps[step].update(consistent_answer=config.step_options[step][label], consistent_label=label,
                                       changed=step in repaired["changed"])
                else:
                    steps[step].update(consistent_answer=None, consistent_label=None, changed=False)
            result["consistent_chain"] = format_chain(config.step_names, [s["consistent_answer"] for s in steps])
            result["changed_steps"] = [s["name"] for s in steps if s["changed"]]
            result["unresolved_contradiction"] = repaired["unresolved"]
        if "maps" in model_outputs:
            height, width = result["image_size"]
            scale = min(1.0, maps_max_side / max(height, width)) if maps_max_side else 1.0
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            result["maps"] = upsample_maps(model_outputs["maps"][0], size)
        return result


__all__ = [
    "StepCoTVQAPipeline",
    "TASK",
    "format_chain",
    "image_statistics",
    "load_image",
    "refusal_reason",
    "step_temperatures",
]
