"""The one model loader of the commands: Step-CoT folders and Hub ids, and the remote-code policy that `stepcot
baseline` folders (`trainers.paper.baselines.load_baseline`) follow for their backbones.

Checkpoints carry their own code (`configuration_stepcot.py`, `modeling_stepcot.py`, `auto_map`) so that
`AutoModel.from_pretrained(dir, trust_remote_code=True)` works without this package. The commands never run that
code: they read `config.json` as plain JSON, build the package's own classes for `model_type` stepcot /
stepcot_student, and refuse any other model type unless the user passed `--trust-remote-code`. Describing a model
(`stepcot info`) reads `config.json` and the safetensors headers only.

A checkpoint that would load into a different model than the one saved is an error, not a warning: missing or
unexpected weights (a missing head, extra or missing steps), weights of the wrong shape or holding NaN / inf,
calibration temperatures that are not finite and positive, and image sizes outside `IMAGE_SIZE_RANGE` (checked
before the model is built).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

STEPCOT_MODEL_TYPES = ("stepcot", "stepcot_student")
CONFIG_FILENAME = "config.json"
WEIGHTS_FILENAME = "model.safetensors"
WEIGHTS_INDEX_FILENAME = "model.safetensors.index.json"
# Input resolutions a Step-CoT vision encoder can be built for; anything else is a damaged config (a 10^6-pixel
# square image would allocate terabytes before failing).
IMAGE_SIZE_RANGE = (8, 4096)
# A safetensors header larger than this is not a header (the format caps it at 100 MB).
MAX_HEADER_BYTES = 100_000_000


class ModelLoadError(ValueError):
    """A model folder or Hub id that cannot be loaded safely; the message names the file and the problem."""


# ---------------------------------------------------------------------------------------------------------------
# Reading files without running anything


def _is_local(name_or_path) -> bool:
    """A path here, or anything that cannot be a Hub id ("org/name")."""
    text = str(name_or_path)
    return Path(text).exists() or text.startswith(("/", ".", "~")) or text.count("/") != 1


def model_file(name_or_path, filename: str, required: bool = True) -> Path | None:
    """`filename` of a model folder or Hub repo (downloaded alone, nothing else is fetched or imported)."""
    if _is_local(name_or_path):
        folder = Path(name_or_path)
        if not folder.exists():
            raise ModelLoadError(f"model folder not found: {name_or_path}")
        if not folder.is_dir():
            raise ModelLoadError(f"{name_or_path} is a file; expected a folder written by save_pretrained")
        path = folder / filename
        if path.is_file():
            return path
        if required:
            raise ModelLoadError(f"{name_or_path} has no {filename}: not a saved model folder")
        return None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(str(name_or_path), filename))
    except EntryNotFoundError:
        if required:
            raise ModelLoadError(f"the Hub repo {name_or_path} has no {filename}") from None
        return None
    except Exception as error:  # noqa: BLE001 - offline, unknown repo, gated: all reported the same way
        raise ModelLoadError(f"cannot fetch {filename} of the Hub repo {name_or_path}: "
                             f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from None


def read_config(name_or_path) -> dict:
    """config.json as plain JSON (no import of any configuration code)."""
    path = model_file(name_or_path, CONFIG_FILENAME)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelLoadError(f"{path} is not a valid JSON config ({error})") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path} must hold a JSON object, got {type(config).__name__}")
    return config


def read_safetensors_header(path) -> dict:
    """The JSON header of a .safetensors file: tensor name -> {dtype, shape, data_offsets} (+ `__metadata__`)."""
    path = Path(path)
    with path.open("rb") as handle:
        size_bytes = handle.read(8)
        if len(size_bytes) != 8:
            raise ModelLoadError(f"{path} is not a safetensors file (shorter than its 8-byte header size)")
        (size,) = struct.unpack("<Q", size_bytes)
        if size > MAX_HEADER_BYTES:
            raise ModelLoadError(f"{path} is not a safetensors file (header size {size} bytes)")
        raw = handle.read(size)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelLoadError(f"{path} is not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path} is not a safetensors file (its header is not a JSON object)")
    return header


def stored_tensors(name_or_path) -> dict[str, dict]:
    """Every stored tensor's dtype and shape, from the safetensors headers (single file or sharded); for a Hub id
    the headers are read remotely, no weights are downloaded."""
    if not _is_local(name_or_path):
        from huggingface_hub import get_safetensors_metadata

        try:
            metadata = get_safetensors_metadata(str(name_or_path))
        except Exception as error:  # noqa: BLE001 - offline, unknown repo, no safetensors: one message
            raise ModelLoadError(f"cannot read the weight headers of the Hub repo {name_or_path}: "
                                 f"{type(error).__name__}") from None
        return {name: {"dtype": info.dtype, "shape": list(info.shape)}
                for shard in metadata.files_metadata.values() for name, info in shard.tensors.items()}
    index = model_file(name_or_path, WEIGHTS_INDEX_FILENAME, required=False)
    if index is not None:
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as error:
            raise ModelLoadError(f"{index} is not a valid safetensors index ({error})") from None
        files = [model_file(name_or_path, shard) for shard in shards]
    else:
        files = [model_file(name_or_path, WEIGHTS_FILENAME)]
    tensors = {}
    for path in files:
        for name, entry in read_safetensors_header(path).items():
            if name != "__metadata__" and isinstance(entry, dict):
                tensors[name] = {"dtype": entry.get("dtype"), "shape": list(entry.get("shape") or [])}
    return tensors


# ---------------------------------------------------------------------------------------------------------------
# Checks


def model_type_of(config: dict, where) -> str:
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise ModelLoadError(f"{where}/{CONFIG_FILENAME} has no model_type")
    return model_type


def check_stepcot_config(config, where) -> None:
    """Errors for a Step-CoT config that would give a different model or NaN output: image size outside
    `IMAGE_SIZE_RANGE`, calibration temperatures that are not one finite positive number per step."""
    image_size = getattr(config, "image_size", None)
    low, high = IMAGE_SIZE_RANGE
    if isinstance(image_size, bool) or not isinstance(image_size, int) or not low <= image_size <= high:
        raise ModelLoadError(f"{where}: image_size {image_size!r} is not an integer in [{low}, {high}]")
    calibration = getattr(config, "calibration", None)
    if calibration is None:
        return
    if not isinstance(calibration, dict) or calibration.get("method") != "temperature":
        raise ModelLoadError(f"{where}: calibration must be {{'method': 'temperature', 'temperatures': [...]}}, "
                             f"got {calibration!r}")
    temperatures = calibration.get("temperatures")
    if not isinstance(temperatures, list) or len(temperatures) != config.num_steps or not all(
            isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t > 0
            for t in temperatures):
        raise ModelLoadError(f"{where}: calibration temperatures {temperatures!r} are not {config.num_steps} "
                             "finite positive numbers (one per step)")


def _check_loading_info(info: dict, where) -> None:
    problems = []
    for key, label in (("missing_keys", "missing from the checkpoint"), ("unexpected_keys", "not in the model "
                       "(extra steps or another architecture)"), ("mismatched_keys", "of the wrong shape")):
        names = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get(key) or ())
        if names:
            shown = ", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6 else "")
            problems.append(f"weights {label}: {shown}")
    if problems:
        raise ModelLoadError(f"{where} does not match its config: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------------------------
# Loading


def stepcot_classes(model_type: str):
    """(config class, model class) of the package for a Step-CoT model type."""
    # imported here, not at the top: `stepcot info` reads configs through this module without importing torch
    from modeling_stepcot import StepCoTConfig, StepCoTStudent, StepCoTStudentConfig, StepCoTTeacher

    return {"stepcot": (StepCoTConfig, StepCoTTeacher),
            "stepcot_student": (StepCoTStudentConfig, StepCoTStudent)}[model_type]


def stepcot_config_from_dict(config: dict, where):
    """The package's config object for a Step-CoT config.json (its own class, never the checkpoint's code)."""
    config_class, _ = stepcot_classes(model_type_of(config, where))
    fields = {key: value for key, value in config.items() if key not in ("auto_map", "architectures")}
    try:
        parsed = config_class.from_dict(fields)
    except (ValueError, TypeError, KeyError) as error:
        raise ModelLoadError(f"{where}/{CONFIG_FILENAME} is not a valid {config['model_type']} config: "
                             f"{str(error).splitlines()[0]}") from None
    check_stepcot_config(parsed, where)
    return parsed


def load_model(name_or_path, device: str | None = None, trust_remote_code: bool = False):
    """A model from a saved folder or Hub id. Step-CoT teachers and students are built from this package's classes
    (the checkpoint's code is never imported) and checked strictly; any other model type needs
    `trust_remote_code=True` (it then loads through `AutoModel`, which may run the checkpoint's code)."""
    import logging

    import transformers

    config_dict = read_config(name_or_path)
    model_type = model_type_of(config_dict, name_or_path)
    if model_type not in STEPCOT_MODEL_TYPES:
        if not trust_remote_code:
            raise ModelLoadError(
                f"{name_or_path} holds a {model_type!r} model, not a Step-CoT teacher or student; loading it may "
                "run code from the checkpoint: pass --trust-remote-code if you trust its source")
        from transformers import AutoModel

        model = AutoModel.from_pretrained(name_or_path, trust_remote_code=True)
        return model.to(device) if device else model
    config = stepcot_config_from_dict(config_dict, name_or_path)
    _, model_class = stepcot_classes(model_type)
    verbosity = transformers.logging.get_verbosity()
    progress_bar = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity(logging.ERROR)  # the load report is raised as an error below instead
    transformers.utils.logging.disable_progress_bar()
    try:
        # Mismatched shapes are collected (not raised with a pointer to a log we silenced) and reported below.
        model, info = model_class.from_pretrained(name_or_path, config=config, output_loading_info=True,
                                                  ignore_mismatched_sizes=True)
    except (OSError, RuntimeError, ValueError) as error:
        raise ModelLoadError(f"cannot load the weights of {name_or_path}: {str(error).splitlines()[0]}") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
        if progress_bar:
            transformers.utils.logging.enable_progress_bar()
    _check_loading_info(info, name_or_path)
    _check_finite(model, name_or_path)
    # from_pretrained leaves every weight trainable: the encoders the config freezes are frozen again, which also
    # lets the teacher encode its step questions once rather than in every forward (its cache needs a frozen encoder)
    model._apply_freezing()
    return model.to(device) if device else model


def _check_finite(model, where) -> None:
    """NaN / inf in the stored weights give NaN answers for every image: an error at load time instead."""
    import torch

    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelLoadError(f"{where}: the weight {name!r} holds NaN or infinite values (damaged checkpoint)")


def load_processor(name_or_path):
    """The checkpoint's saved `StepCoTProcessor` (this package's class), or None when it has none."""
    # imported here, not at the top: `stepcot info` uses this module without importing torch
    from modeling_stepcot.processing_stepcot import StepCoTProcessor

    try:  # trust_remote_code=False: a tokenizer_config.json naming custom code is refused, never run or prompted
        return StepCoTProcessor.from_pretrained(name_or_path, trust_remote_code=False)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def add_trust_remote_code_argument(parser) -> None:
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow a model that is not a Step-CoT teacher/student to run code from its checkpoint "
                             "(only for checkpoints whose source you trust)")


__all__ = [
    "IMAGE_SIZE_RANGE",
    "ModelLoadError",
    "STEPCOT_MODEL_TYPES",
    "add_trust_remote_code_argument",
    "check_stepcot_config",
    "load_model",
    "load_processor",
    "read_config",
    "read_safetensors_header",
    "stepcot_config_from_dict",
    "stored_tensors",
]
