"""`stepcot info MODEL_DIR`: what a saved Step-CoT model is, without running it.

Reads `config.json` and the safetensors headers only: nothing from the checkpoint is imported or executed (a
checkpoint's `configuration_stepcot.py` is remote code that only `--trust-remote-code` commands may run), and
neither torch nor transformers is imported, so the command answers at once. Parameter counts come from the stored
tensor shapes: every stored tensor is a parameter except the buffers named in `BUFFER_NAMES`; the frozen encoders
(`freeze_vision_encoder`, `freeze_text_encoder`) are the parameters that do not train.
"""

import json
from pathlib import Path
from types import SimpleNamespace

from trainers.console import print_command_error

HELP = "describe a saved Step-CoT model folder (reads config.json and weight headers only; runs no code)"
EXAMPLES = [
    "stepcot info outputs/demo/student",
]

# Stored tensors that are buffers, not parameters: the teacher's tokenized step questions and BatchNorm statistics
# (EfficientNet-Lite0).
BUFFER_NAMES = ("question_input_ids", "question_attention_mask", "running_mean", "running_var",
                "num_batches_tracked")
# The text tower of CLIP that the paper's Table 11 counts with the image tower (loaded, never run): CLIP's default
# text config (ViT-B/32's), since a Step-CoT config records the vision tower only.
CLIP_TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                          max_position_embeddings=77)
CLASS_NAMES = {"stepcot": "StepCoTTeacher", "stepcot_student": "StepCoTStudent"}


def add_arguments(parser):
    parser.add_argument("model_dir", help="a folder written by save_pretrained (or a Hub id)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def clip_text_tower_parameters(projection_dim: int, vocab_size: int, hidden_size: int, intermediate_size: int,
                               num_hidden_layers: int, max_position_embeddings: int) -> int:
    """Parameters of a CLIP text tower with its projection and CLIPModel's logit scale (what CLIPModel holds beyond
    CLIPVisionModelWithProjection)."""
    h, inner = hidden_size, intermediate_size
    layer = 4 * (h * h + h) + 2 * 2 * h + (h * inner + inner) + (inner * h + h)  # q k v out, 2 LayerNorms, MLP
    embeddings = vocab_size * h + max_position_embeddings * h
    return embeddings + num_hidden_layers * layer + 2 * h + h * projection_dim + 1


def _values(entry: dict) -> int:
    count = 1
    for dimension in entry["shape"]:
        count *= int(dimension)
    return count


def _is_buffer(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in BUFFER_NAMES


def _steps(config: dict, where) -> list[dict]:
    from trainers.model_loading import CONFIG_FILENAME, ModelLoadError

    names, questions, options = (config.get(key) for key in ("step_names", "step_questions", "step_options"))
    if not (isinstance(names, list) and isinstance(questions, list) and isinstance(options, list)
            and len(names) == len(questions) == len(options) > 0
            and all(isinstance(o, list) and all(isinstance(t, str) for t in o) for o in options)):
        raise ModelLoadError(f"{where}/{CONFIG_FILENAME}: step_names, step_questions and step_options must be "
                             "lists of the same length (options: lists of strings)")
    return [{"name": name, "question": question, "options": option}
            for name, question, option in zip(names, questions, options)]


def describe(model_dir: str) -> dict:
    from trainers.model_loading import (
        CONFIG_FILENAME,
        STEPCOT_MODEL_TYPES,
        ModelLoadError,
        check_model_size,
        check_stepcot_config,
        model_type_of,
        read_config,
        stored_tensors,
    )

    config = read_config(model_dir)
    model_type = model_type_of(config, model_dir)
    if model_type not in STEPCOT_MODEL_TYPES:
        raise ModelLoadError(f"{model_dir} holds a {model_type!r} model, not a Step-CoT teacher or student.")
    steps = _steps(config, model_dir)
    check_stepcot_config(SimpleNamespace(image_size=config.get("image_size"), calibration=config.get("calibration"),
                                         num_steps=len(steps)), model_dir)
    # the loader's size check reads attributes: the same limits as `predict`, on the JSON as read
    check_model_size(SimpleNamespace(**{key: SimpleNamespace(**value) if isinstance(value, dict) else value
                                        for key, value in config.items() if isinstance(key, str)}
                                     | {"num_steps": len(steps)}), model_dir)
    teacher = model_type == "stepcot"
    tensors = stored_tensors(model_dir)
    stored = sum(_values(entry) for entry in tensors.values())
    frozen_prefixes = tuple(prefix for prefix, key in (("vision_encoder.", "freeze_vision_encoder"),
                                                       ("text_encoder.", "freeze_text_encoder"))
                            if config.get(key, True))
    total = trainable = 0
    for name, entry in tensors.items():
        if _is_buffer(name):
            continue
        total += _values(entry)
        trainable += 0 if name.startswith(frozen_prefixes) else _values(entry)
    unused_text_tower = pooler = 0
    if config.get("vision_backbone", "clip") == "clip":
        projection_dim = (config.get("vision_config") or {}).get("projection_dim", 512)
        unused_text_tower = clip_text_tower_parameters(projection_dim, **CLIP_TEXT_DEFAULTS)
    if teacher and config.get("use_text", True):
        text_hidden = (config.get("text_config") or {}).get("hidden_size")
        if not isinstance(text_hidden, int):
            raise ModelLoadError(f"{model_dir}/{CONFIG_FILENAME}: text_config.hidden_size is missing")
        pooler = text_hidden * text_hidden + text_hidden  # BERT's pooler dense layer (loaded, unused)
    path = Path(model_dir)
    return {
        "path": str(model_dir),
        "class": CLASS_NAMES[model_type],
        "model_type": model_type,
        "vision_backbone": config.get("vision_backbone"),
        "vision_encoder": config.get("vision_encoder_name_or_path"),
        "text_encoder": config.get("text_encoder_name_or_path"),
        "hidden_size": config.get("hidden_size"),
        "image_size": config.get("image_size"),
        "ablations": {k: config.get(k, True) for k in ("use_memory", "use_text")} if teacher else {},
        "parameters": total,
        "trainable_parameters": trainable,
        "stored_tensors": len(tensors),
        "stored_values": stored,
        "calibration": config.get("calibration"),
        "paper_comparable_parameters": total + unused_text_tower + pooler,
        "steps": steps,
        "files": sorted(p.name for p in path.iterdir()) if path.is_dir() else [],
    }


def run(args) -> int:
    from trainers.model_loading import ModelLoadError

    try:
        info = describe(args.model_dir)
    except ModelLoadError as error:
        print_command_error("info", error)
        return 1
    if args.json:
        print(json.dumps(info, indent=2, allow_nan=False))
        return 0
    print(f"{info['class']} ({info['model_type']}) at {info['path']}")
    encoder = info["vision_encoder"] or "random init"
    print(f"  vision: {info['vision_backbone']} ({encoder}), image size {info['image_size']}")
    if info["model_type"] == "stepcot":
        print(f"  text: {info['text_encoder'] or 'random init'}; ablations: {info['ablations']}")
    print(f"  hidden size {info['hidden_size']}; parameters {info['parameters'] / 1e6:.2f} M "
          f"({info['trainable_parameters'] / 1e6:.2f} M trainable; {info['paper_comparable_parameters'] / 1e6:.2f} M "
          "counted as the paper's Table 11, with CLIP's unused text tower and BERT's unused pooler); "
          f"{info['stored_tensors']} stored tensors")
    for number, step in enumerate(info["steps"], 1):
        print(f"  step {number} {step['name']}: {step['question']}  [{' | '.join(step['options'])}]")
    if info["files"]:
        print(f"  files: {', '.join(info['files'])}")
    return 0
