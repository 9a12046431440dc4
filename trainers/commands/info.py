"""`stepcot info MODEL_DIR`: what a saved Step-CoT model is, without running it.

Reads `config.json` and the safetensors headers only: nothing from the checkpoint is imported or executed (a
checkpoint's `configuration_stepcot.py` is remote code that only `--trust-remote-code` commands may run).
"""

import json
import sys
from pathlib import Path

HELP = "describe a saved Step-CoT model folder (reads config.json and weight headers only; runs no code)"
EXAMPLES = [
    "stepcot info outputs/demo/student",
]



def add_arguments(parser):
    parser.add_argument("model_dir", help="a folder written by save_pretrained (or a Hub id)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def describe(model_dir: str) -> dict:
    import torch

    from trainers.evaluation.loading import (
        STEPCOT_MODEL_TYPES,
        ModelLoadError,
        model_type_of,
        read_config,
        stepcot_classes,
        stepcot_config_from_dict,
        stored_tensors,
    )
    from trainers.paper.efficiency import paper_comparable_parameters

    config_dict = read_config(model_dir)
    model_type = model_type_of(config_dict, model_dir)
    if model_type not in STEPCOT_MODEL_TYPES:
        raise ModelLoadError(f"{model_dir} holds a {model_type!r} model, not a Step-CoT teacher or student.")
    config = stepcot_config_from_dict(config_dict, model_dir)
    _, model_class = stepcot_classes(model_type)
    with torch.device("meta"):  # this package's class, no weights allocated: which parameters train
        model = model_class(config)
    total = sum(p.numel() for p in model.parameters())
    paper_count = paper_comparable_parameters(config)["paper_comparable"]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tensors = stored_tensors(model_dir)
    stored = 0
    for entry in tensors.values():
        count = 1
        for dimension in entry["shape"]:
            count *= int(dimension)
        stored += count
    path = Path(model_dir)
    return {
        "path": str(model_dir),
        "class": model_class.__name__,
        "model_type": model_type,
        "vision_backbone": config.vision_backbone,
        "vision_encoder": config.vision_encoder_name_or_path,
        "text_encoder": getattr(config, "text_encoder_name_or_path", None),
        "hidden_size": config.hidden_size,
        "image_size": config.image_size,
        "ablations": {k: getattr(config, k) for k in ("use_memory", "use_text") if hasattr(config, k)},
        "parameters": total,
        "trainable_parameters": trainable,
        "stored_tensors": len(tensors),
        "stored_values": stored,
        "calibration": getattr(config, "calibration", None),
        "paper_comparable_parameters": paper_count,
        "steps": [
            {"name": name, "question": question, "options": options}
            for name, question, options in zip(config.step_names, config.step_questions, config.step_options)
        ],
        "files": sorted(p.name for p in path.iterdir()) if path.is_dir() else [],
    }


def run(args) -> int:
    from trainers.evaluation.loading import ModelLoadError

    try:
        info = describe(args.model_dir)
    except ModelLoadError as error:
        print(f"stepcot info: error: {error}", file=sys.stderr)
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
