"""`stepcot info MODEL_DIR`: what a saved Step-CoT model is, without running it."""

import json
from pathlib import Path

HELP = "describe a saved Step-CoT model folder"



def add_arguments(parser):
    parser.add_argument("model_dir", help="a folder written by save_pretrained (or a Hub id)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def describe(model_dir: str) -> dict:
    import torch
    from transformers import AutoConfig, AutoModel

    path = Path(model_dir)
    if path.exists() and not (path / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} has no config.json: not a saved model folder.")
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=True)
    if not getattr(config, "model_type", "").startswith("stepcot"):
        raise ValueError(f"{model_dir} holds a {config.model_type!r} model, not a Step-CoT teacher or student.")
    with torch.device("meta"):  # count parameters without allocating weights
        model = AutoModel.from_config(config, trust_remote_code=True)
    total = sum(p.numel() for p in model.parameters())
    from trainers.paper.efficiency import paper_comparable_parameters

    paper_count = paper_comparable_parameters(config)["paper_comparable"]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "path": str(model_dir),
        "class": type(model).__name__,
        "model_type": config.model_type,
        "vision_backbone": config.vision_backbone,
        "vision_encoder": config.vision_encoder_name_or_path,
        "text_encoder": getattr(config, "text_encoder_name_or_path", None),
        "hidden_size": config.hidden_size,
        "image_size": config.image_size,
        "ablations": {k: getattr(config, k) for k in ("use_memory", "use_text") if hasattr(config, k)},
        "parameters": total,
        "trainable_parameters": trainable,
        "paper_comparable_parameters": paper_count,
        "steps": [
            {"name": name, "question": question, "options": options}
            for name, question, options in zip(config.step_names, config.step_questions, config.step_options)
        ],
        "files": sorted(p.name for p in path.iterdir()) if path.is_dir() else [],
    }


def run(args) -> int:
    info = describe(args.model_dir)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['class']} ({info['model_type']}) at {info['path']}")
    encoder = info["vision_encoder"] or "random init"
    print(f"  vision: {info['vision_backbone']} ({encoder}), image size {info['image_size']}")
    if info["model_type"] == "stepcot":
        print(f"  text: {info['text_encoder'] or 'random init'}; ablations: {info['ablations']}")
    print(f"  hidden size {info['hidden_size']}; parameters {info['parameters'] / 1e6:.2f} M "
          f"({info['trainable_parameters'] / 1e6:.2f} M trainable; {info['paper_comparable_parameters'] / 1e6:.2f} M "
          "counted as the paper's Table 11, with CLIP's unused text tower and BERT's unused pooler)")
    for number, step in enumerate(info["steps"], 1):
        print(f"  step {number} {step['name']}: {step['question']}  [{' | '.join(step['options'])}]")
    if info["files"]:
        print(f"  files: {', '.join(info['files'])}")
    return 0
