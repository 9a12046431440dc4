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

Every file is checked before anything reads it for real (`weight_files`): JSON files (config, shard index) have a
size and nesting limit; only `.safetensors` weights are read (a folder with only `pytorch_model.bin` is refused,
never unpickled); every file the folder names resolves inside it; each safetensors header must describe its file
exactly (known dtypes, shapes whose byte size equals their offsets, offsets that tile the data without gaps or
overlaps). A config whose model would be absurdly large (`max_model_parameters`, `MAX_ENCODER_LAYERS`) is refused
before anything is built. Exports record a fingerprint of the step options in the weights' metadata
(`stamp_step_options`); a config whose options disagree with it (options reordered or renamed after training)
loads with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
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
# config.json / model.safetensors.index.json: larger or deeper than this is not a model's config (a CLIP + BERT
# teacher's config is ~10 kB, 4 levels deep; an index of 10,000 tensors ~1 MB).
MAX_JSON_BYTES = 20_000_000
MAX_JSON_DEPTH = 32
# The largest model a config may describe (parameters estimated from the config, before anything is built);
# STEPCOT_MAX_MODEL_PARAMETERS overrides it. The paper's teacher (CLIP ViT-B/32 + BERT-base) has ~200 M.
DEFAULT_MAX_MODEL_PARAMETERS = 5_000_000_000
MAX_ENCODER_LAYERS = 1_000
# Weight files the loader never reads: pickles run code when loaded.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Bytes per element of each safetensors dtype.
SAFETENSORS_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
                           "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
# safetensors metadata key of the step-options fingerprint written at export.
STEP_OPTIONS_METADATA_KEY = "stepcot_step_options_sha256"

logger = logging.getLogger(__name__)


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


def _json_depth_exceeds(value, limit: int) -> bool:
    """Whether `value` nests deeper than `limit` (iterative: a deep value cannot exhaust the stack here)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def read_json_file(path, what: str = "JSON file"):
    """A model folder's JSON file, within `MAX_JSON_BYTES` and `MAX_JSON_DEPTH`; ModelLoadError naming the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise ModelLoadError(f"{path} is {size:,} bytes, larger than any {what} ({MAX_JSON_BYTES:,} at most)")
        value = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise ModelLoadError(f"{path} is not a valid {what} (JSON nested too deeply)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelLoadError(f"{path} is not a valid {what} ({error})") from None
    except OSError as error:
        raise ModelLoadError(f"cannot read {path}: {error.strerror or error}") from None
    if _json_depth_exceeds(value, MAX_JSON_DEPTH):
        raise ModelLoadError(f"{path} is not a valid {what} (JSON nested deeper than {MAX_JSON_DEPTH} levels)")
    return value


def read_config(name_or_path) -> dict:
    """config.json as plain JSON (no import of any configuration code)."""
    path = model_file(name_or_path, CONFIG_FILENAME)
    config = read_json_file(path, "JSON config")
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path} must hold a JSON object, got {type(config).__name__}")
    return config


def read_safetensors_header(path) -> dict:
    """The JSON header of a .safetensors file: tensor name -> {dtype, shape, data_offsets} (+ `__metadata__`),
    checked against the file: known dtypes, non-negative integer shapes whose byte size equals their offsets, and
    offsets that tile the data after the header exactly (no gaps, overlaps or bytes past the end)."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            file_size = os.fstat(handle.fileno()).st_size
            size_bytes = handle.read(8)
            if len(size_bytes) != 8:
                raise ModelLoadError(f"{path} is not a safetensors file (shorter than its 8-byte header size)")
            (size,) = struct.unpack("<Q", size_bytes)
            if size > MAX_HEADER_BYTES or size > file_size - 8:
                raise ModelLoadError(f"{path} is not a safetensors file (header size {size:,} bytes in a file of "
                                     f"{file_size:,})")
            raw = handle.read(size)
    except OSError as error:
        raise ModelLoadError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise ModelLoadError(f"{path} is not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path} is not a safetensors file (its header is not a JSON object)")
    _check_header_layout(header, file_size - 8 - size, path)
    return header


def _check_header_layout(header: dict, data_bytes: int, path) -> None:
    def bad(name, problem):
        return ModelLoadError(f"{path} is damaged: tensor {name!r} {problem}")

    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ModelLoadError(f"{path} is damaged: __metadata__ is not a map of strings")
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise bad(name, "has no dtype/shape/data_offsets entry")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in SAFETENSORS_DTYPE_BYTES:
            raise bad(name, f"has an unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise bad(name, f"has an invalid shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise bad(name, f"has invalid data_offsets {offsets!r}")
        expected = math.prod(shape) * SAFETENSORS_DTYPE_BYTES[dtype]
        if offsets[1] - offsets[0] != expected:
            raise bad(name, f"of shape {shape} needs {expected:,} bytes but its offsets span "
                            f"{offsets[1] - offsets[0]:,}")
        spans.append((offsets[0], offsets[1], name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise bad(name, f"starts at byte {begin:,} of the data, expected {position:,} (overlapping or gapped "
                            "offsets)")
        position = end
    if position != data_bytes:
        raise ModelLoadError(f"{path} is damaged: its tensors describe {position:,} bytes of data, the file holds "
                             f"{data_bytes:,}")


def _inside(path: Path, folder: Path) -> bool:
    """Whether `path`, symbolic links resolved, lies inside `folder` (or, for a Hugging Face cache snapshot, in the
    repo's `blobs/` folder its links point at)."""
    target, root = path.resolve(), folder.resolve()
    allowed = [root]
    if root.parent.name == "snapshots":
        allowed.append(root.parent.parent / "blobs")
    return any(target == base or base in target.parents for base in allowed)


def _weight_file_name(name, index) -> str:
    """A shard name from an index's weight_map: a plain relative `.safetensors` path without `..`."""
    if not isinstance(name, str) or not name:
        raise ModelLoadError(f"{index}: weight_map entry {name!r} is not a file name")
    parts = Path(name).parts
    if Path(name).is_absolute() or name.startswith(("/", "\\")) or ".." in parts or "\\" in name:
        raise ModelLoadError(f"{index}: weight_map names {name!r}, outside the model folder")
    if not name.endswith(".safetensors"):
        raise ModelLoadError(f"{index}: weight_map names {name!r}; only safetensors are read")
    return name


def weight_files(name_or_path) -> list[Path]:
    """The model's safetensors files, each checked (`read_safetensors_header`) and, for a folder, inside it.
    A folder with only pickled weights (`pytorch_model.bin`, ...) is refused without reading them."""
    local = _is_local(name_or_path)
    index = model_file(name_or_path, WEIGHTS_INDEX_FILENAME, required=False)
    if index is not None:
        content = read_json_file(index, "safetensors index")
        weight_map = content.get("weight_map") if isinstance(content, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelLoadError(f"{index} is not a valid safetensors index (no weight_map of tensor -> file)")
        names = sorted({_weight_file_name(name, index) for name in weight_map.values()})
    elif local and not (Path(name_or_path) / WEIGHTS_FILENAME).exists():
        folder = Path(name_or_path)
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES) if folder.is_dir() else []
        if pickles:
            raise ModelLoadError(f"cannot load model {name_or_path}: it holds {', '.join(pickles)} but no "
                                 f"{WEIGHTS_FILENAME}; only safetensors are read (pickled weights can run code)")
        names = [WEIGHTS_FILENAME]
    else:
        names = [WEIGHTS_FILENAME]
    files = []
    for name in names:
        if local:
            path = Path(name_or_path) / name
            if (path.exists() or path.is_symlink()) and not _inside(path, Path(name_or_path)):
                raise ModelLoadError(f"cannot load model {name_or_path}: {name} resolves to {path.resolve()}, "
                                     "outside the model folder")
        path = model_file(name_or_path, name)
        read_safetensors_header(path)
        files.append(path)
    return files


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
    files = weight_files(name_or_path)
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
    `IMAGE_SIZE_RANGE`, calibration temperatures that are not one finite positive number per step, embedding
    statistics that are not numbers, and a model too large to build (`check_model_size`)."""
    image_size = getattr(config, "image_size", None)
    low, high = IMAGE_SIZE_RANGE
    if isinstance(image_size, bool) or not isinstance(image_size, int) or not low <= image_size <= high:
        raise ModelLoadError(f"{where}: image_size {image_size!r} is not an integer in [{low}, {high}]")
    check_model_size(config, where)
    _check_embedding_statistics(getattr(config, "embedding_statistics", None), where)
    calibration = getattr(config, "calibration", None)
    if calibration is None:
        return
    if not isinstance(calibration, dict) or calibration.get("method") != "temperature":
        raise ModelLoadError(f"{where}: calibration must be {{'method': 'temperature', 'temperatures': [...]}}, "
                             f"got {calibration!r}")
    temperatures = calibration.get("temperatures")
    if not isinstance(temperatures, list) or len(temperatures) != config.num_steps or not all(
            _is_finite_number(t) and t > 0 for t in temperatures):
        raise ModelLoadError(f"{where}: calibration temperatures {temperatures!r} are not {config.num_steps} "
                             "finite positive numbers (one per step)")


def _is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_embedding_statistics(statistics, where) -> None:
    """`config.embedding_statistics`: equal-length lists `mean` (finite) and `scale` (finite, > 0), a finite
    `threshold`; anything else is named as this config field (not blamed on the first image predicted)."""
    if statistics is None:
        return
    field = f"{where}/{CONFIG_FILENAME}: embedding_statistics"
    if not isinstance(statistics, dict):
        raise ModelLoadError(f"{field} must be an object with mean, scale and threshold, got "
                             f"{type(statistics).__name__}")
    mean, scale = statistics.get("mean"), statistics.get("scale")
    for key, values, positive in (("mean", mean, False), ("scale", scale, True)):
        if not isinstance(values, list) or not values or not all(
                _is_finite_number(v) and (v > 0 or not positive) for v in values):
            raise ModelLoadError(f"{field}.{key} must be a non-empty list of finite "
                                 f"{'positive ' if positive else ''}numbers")
    if len(mean) != len(scale):
        raise ModelLoadError(f"{field}: mean has {len(mean)} values, scale {len(scale)}")
    if not _is_finite_number(statistics.get("threshold")):
        raise ModelLoadError(f"{field}.threshold must be a finite number, got {statistics.get('threshold')!r}")


def max_model_parameters() -> int:
    """`STEPCOT_MAX_MODEL_PARAMETERS` when set (a positive integer), else `DEFAULT_MAX_MODEL_PARAMETERS`."""
    text = os.environ.get("STEPCOT_MAX_MODEL_PARAMETERS", "").strip().replace("_", "")
    if not text:
        return DEFAULT_MAX_MODEL_PARAMETERS
    try:
        value = int(float(text))
    except ValueError:
        raise ModelLoadError(f"STEPCOT_MAX_MODEL_PARAMETERS={text!r} is not a number") from None
    if value < 1:
        raise ModelLoadError(f"STEPCOT_MAX_MODEL_PARAMETERS={text!r} must be positive")
    return value


def _encoder_parameters(sub_config) -> int:
    """Parameters of a transformer encoder (CLIP vision tower or BERT) from its config: embeddings plus
    `num_hidden_layers` blocks of attention (4 h^2) and MLP (2 h i); an upper-bound-like estimate."""
    def number(name, default=0):
        value = getattr(sub_config, name, default)
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default

    hidden, intermediate = number("hidden_size"), number("intermediate_size")
    layers = number("num_hidden_layers")
    embeddings = (number("vocab_size") + number("max_position_embeddings") + number("type_vocab_size")) * hidden
    patch = number("patch_size")
    if patch:
        embeddings += ((number("image_size") // patch) ** 2 + 1 + number("num_channels", 3) * patch ** 2) * hidden
    return embeddings + layers * (4 * hidden * hidden + 2 * hidden * intermediate + 10 * hidden + intermediate)


def estimated_parameters(config) -> int:
    """The model's parameter count estimated from its config alone (nothing is built)."""
    hidden = getattr(config, "hidden_size", 0)
    hidden = hidden if isinstance(hidden, int) and hidden > 0 else 0
    width = max((len(o) for o in getattr(config, "step_options", []) or []), default=0)
    steps = getattr(config, "num_steps", 0) or 0
    total = steps * (8 * hidden * hidden + 2 * hidden * width)  # heads, projections, GAT / memory per step
    for name in ("vision_config", "text_config"):
        sub_config = getattr(config, name, None)
        if sub_config is not None:
            total += _encoder_parameters(sub_config)
    if getattr(config, "vision_backbone", None) == "efficientnet_lite0":
        total += 5_000_000
    return total


def check_model_size(config, where) -> None:
    """Refuse a config describing an absurd model before anything is built (building a 100,000-layer encoder takes
    minutes and unbounded memory): more than `MAX_ENCODER_LAYERS` layers in an encoder, or more parameters than
    `max_model_parameters()`."""
    for name in ("vision_config", "text_config"):
        layers = getattr(getattr(config, name, None), "num_hidden_layers", 0)
        if isinstance(layers, int) and layers > MAX_ENCODER_LAYERS:
            raise ModelLoadError(f"{where}/{CONFIG_FILENAME}: {name}.num_hidden_layers {layers:,} is above "
                                 f"{MAX_ENCODER_LAYERS:,}; not a model this loader builds")
    estimate, limit = estimated_parameters(config), max_model_parameters()
    if estimate > limit:
        raise ModelLoadError(f"{where}/{CONFIG_FILENAME} describes a model of about {estimate:,} parameters, above "
                             f"the limit of {limit:,} (set STEPCOT_MAX_MODEL_PARAMETERS to allow it)")


def step_options_fingerprint(step_options) -> str:
    """sha256 of the step option texts in order (what an export records with the weights)."""
    return hashlib.sha256(json.dumps(step_options, ensure_ascii=False).encode("utf-8")).hexdigest()


def stamp_step_options(folder, step_options) -> None:
    """Record `step_options_fingerprint` in the `__metadata__` of every safetensors file of a saved folder (the
    header is rewritten; tensor data and offsets are unchanged). Written to a temporary file, then renamed."""
    folder = Path(folder)
    fingerprint = step_options_fingerprint(step_options)
    for path in weight_files(folder):
        header = read_safetensors_header(path)
        header.setdefault("__metadata__", {})[STEP_OPTIONS_METADATA_KEY] = fingerprint
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes
        temporary = path.with_name(path.name + ".tmp")
        with path.open("rb") as source, temporary.open("wb") as target:
            (old_size,) = struct.unpack("<Q", source.read(8))
            source.seek(8 + old_size)
            target.write(struct.pack("<Q", len(raw)) + raw)
            while chunk := source.read(1 << 24):
                target.write(chunk)
        os.replace(temporary, path)


def check_step_options(config, files, where) -> None:
    """Warn (one line) when the weights' recorded step-options fingerprint disagrees with the config's options:
    the same weights would answer with other labels."""
    recorded = {read_safetensors_header(path).get("__metadata__", {}).get(STEP_OPTIONS_METADATA_KEY)
                for path in files} - {None}
    if recorded and step_options_fingerprint(config.step_options) not in recorded:
        logger.warning(f"warning: {where}: the step options in {CONFIG_FILENAME} differ from those the weights "
                       "were exported with (reordered or renamed options); the answers may be relabelled")


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
    from huggingface_hub.errors import StrictDataclassError

    try:
        parsed = config_class.from_dict(fields)
    except (ValueError, TypeError, KeyError, AttributeError, StrictDataclassError, RecursionError) as error:
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
    from safetensors import SafetensorError

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
    files = weight_files(name_or_path)  # every file checked before transformers reads any
    check_step_options(config, files, name_or_path)
    _, model_class = stepcot_classes(model_type)
    verbosity = transformers.logging.get_verbosity()
    progress_bar = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity(logging.ERROR)  # the load report is raised as an error below instead
    transformers.utils.logging.disable_progress_bar()
    try:
        # Mismatched shapes are collected (not raised with a pointer to a log we silenced) and reported below.
        model, info = model_class.from_pretrained(name_or_path, config=config, output_loading_info=True,
                                                  ignore_mismatched_sizes=True, use_safetensors=True)
    except (OSError, RuntimeError, ValueError, SafetensorError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelLoadError(f"cannot load model {name_or_path}: {message}") from None
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
    "stamp_step_options",
    "step_options_fingerprint",
    "stepcot_config_from_dict",
    "stored_tensors",
    "weight_files",
]
