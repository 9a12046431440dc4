"""Baselines, part 1: frozen vision-language backbones (transformers or open_clip) and the cached pooled
image / question embeddings of a dataset split."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from modeling_stepcot import StepCoTStudent
from modeling_stepcot.configuration_stepcot import DEFAULT_STEP_QUESTIONS
from modeling_stepcot.processing_stepcot import image_processor_for_config, image_to_rgb
from trainers.training.feature_cache import (
    encoder_fingerprint,
    image_embeds_path,
    module_fingerprint,
    open_image_embeds,
    split_identity,
)
from trainers.training.offline_encoders import offline_text_encoder_path

QUESTION_PREFIX = "Question: "
# The paper tokenizes questions to 128 tokens; CLIP-style text towers accept fewer (77), so the smaller wins.
QUESTION_MAX_LENGTH = 128
OPEN_CLIP_PREFIX = "hf-hub:"
OPEN_CLIP_INSTALL = "pip install open_clip_torch"


# ---------------------------------------------------------------------------------------------------------------
# Frozen backbones: pooled image and text embeddings


def pooled_output(output) -> torch.Tensor:
    """A (B, D) embedding from what `get_image_features` / `get_text_features` return: a tensor (transformers 4),
    or a model output whose `pooler_output` holds the projected embedding (transformers 5). FLAVA projects every
    token; its pooled embedding is the first (CLS) token, as in FlavaModel.forward."""
    if not isinstance(output, torch.Tensor):
        pooled = getattr(output, "pooler_output", None)
        if pooled is None:
            raise ValueError(f"the backbone's feature method returned {type(output).__name__} without pooler_output")
        output = pooled
    return output[:, 0] if output.dim() == 3 else output


def is_open_clip_name(name_or_path: str) -> bool:
    """open_clip names its Hub models `hf-hub:ORG/NAME`; a local open_clip export has open_clip_config.json."""
    return name_or_path.startswith(OPEN_CLIP_PREFIX) or (Path(name_or_path) / "open_clip_config.json").is_file()


class _Backbone:
    """What every backbone shares: a weight fingerprint for the embedding cache, computed once."""

    def fingerprint(self) -> str:
        if getattr(self, "_fingerprint", None) is None:  # hashing every weight takes ~1 s for ViT-B: once per run
            self._fingerprint = module_fingerprint(self.model, self.name)
        return self._fingerprint


class TransformersBackbone(_Backbone):
    """A transformers vision-language model with `get_image_features` and `get_text_features`."""

    kind = "transformers"

    def __init__(self, name_or_path: str, device: str = "cpu", trust_remote_code: bool = False):
        from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer

        remote = {"trust_remote_code": trust_remote_code}  # False: a checkpoint's own code is refused, not run
        try:
            config = AutoConfig.from_pretrained(name_or_path, **remote)
        except (OSError, ValueError) as error:
            hint = ""
            if "biomedclip" in name_or_path.lower():
                hint = (f" BiomedCLIP is an open_clip model: pass --backbone {OPEN_CLIP_PREFIX}"
                        f"{name_or_path.split(OPEN_CLIP_PREFIX)[-1]} (needs `{OPEN_CLIP_INSTALL}`).")
            raise ValueError(f"cannot load the backbone config of {name_or_path!r}: {error}{hint}") from error
        self.name = name_or_path
        self.model = AutoModel.from_pretrained(name_or_path, **remote).to(device).eval().requires_grad_(False)
        missing = [m for m in ("get_image_features", "get_text_features") if not hasattr(self.model, m)]
        if missing:
            raise ValueError(
                f"{name_or_path} loads as {type(self.model).__name__} ({config.model_type}), which has no "
                f"{' / '.join(missing)}: the baseline needs a dual-encoder vision-language model (CLIP, SigLIP, "
                "ALIGN, BLIP, FLAVA, ...). VisualBERT-style models need region features from a detector and are "
                "not supported."
            )
        self.image_processor = AutoImageProcessor.from_pretrained(name_or_path, **remote)
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path, **remote)
        self.device = device
        text_config = getattr(config, "text_config", None)
        limits = [QUESTION_MAX_LENGTH, getattr(self.tokenizer, "model_max_length", QUESTION_MAX_LENGTH),
                  getattr(text_config, "max_position_embeddings", QUESTION_MAX_LENGTH)]
        self.max_length = int(min(limit for limit in limits if limit))

    @property
    def image_size(self) -> int | None:
        size = getattr(self.image_processor, "size", None) or {}
        return size.get("height") or size.get("shortest_edge")

    def preprocessing(self) -> dict:
        return {"image_processor": self.image_processor.to_dict(), "max_length": self.max_length}

    @torch.no_grad()
    def embed_images(self, images) -> torch.Tensor:
        rgb = [image_to_rgb(image, self.image_size) for image in images]
        pixel_values = self.image_processor(images=rgb, return_tensors="pt")["pixel_values"].to(self.device)
        return pooled_output(self.model.get_image_features(pixel_values=pixel_values)).float().cpu()

    @torch.no_grad()
    def embed_texts(self, texts) -> torch.Tensor:
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        return pooled_output(self.model.get_text_features(**inputs)).float().cpu()


class OpenClipBackbone(_Backbone):
    """An open_clip model (e.g. hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224)."""

    kind = "open_clip"

    def __init__(self, name_or_path: str, device: str = "cpu"):
        try:
            import open_clip
        except ModuleNotFoundError as error:
            raise ModuleNotFoundError(
                f"{name_or_path} is an open_clip model (BiomedCLIP and similar cannot be loaded by transformers): "
                f"install open_clip with `{OPEN_CLIP_INSTALL}` and run again."
            ) from error
        self.name = name_or_path
        self.model, self.preprocess = open_clip.create_model_from_pretrained(name_or_path)
        self.model = self.model.to(device).eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(name_or_path)
        self.device = device

    def preprocessing(self) -> dict:
        return {"open_clip_preprocess": repr(self.preprocess)}

    @torch.no_grad()
    def embed_images(self, images) -> torch.Tensor:
        pixel_values = torch.stack([self.preprocess(image_to_rgb(image)) for image in images]).to(self.device)
        return self.model.encode_image(pixel_values).float().cpu()

    @torch.no_grad()
    def embed_texts(self, texts) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(list(texts)).to(self.device)).float().cpu()


class OfflineBackbone(_Backbone):
    """The offline encoders of `stepcot train`: ImageNet EfficientNet-Lite0 for the images (the Step-CoT models'
    own vision encoder and preprocessing, so the probe sees the features the heads see) and MiniLM for the
    questions (mean of the token states). Needs no Hub access."""

    kind = "offline"

    def __init__(self, name_or_path: str = "efficientnet_lite0", device: str = "cpu"):
        from transformers import AutoModel, AutoTokenizer


        self.name = name_or_path
        self.model = StepCoTStudent.from_pretrained_encoders(vision=name_or_path).to(device).eval()
        self.image_processor = image_processor_for_config(self.model.config)
        text_path = offline_text_encoder_path()
        self.tokenizer = AutoTokenizer.from_pretrained(text_path)
        self.text_model = AutoModel.from_pretrained(text_path).to(device).eval().requires_grad_(False)
        self.device = device

    def fingerprint(self) -> str:
        if getattr(self, "_fingerprint", None) is None:
            self._fingerprint = module_fingerprint(self.model.vision_encoder, self.name)
        return self._fingerprint

    def preprocessing(self) -> dict:
        return {"image_size": self.model.config.image_size, "image_processor": self.image_processor.to_dict()}

    def training_cache_file(self, data, split: str, cache_dir) -> Path:
        """Where `stepcot train` stores this split's features (its OUTPUT_DIR/cache): read, not encoded twice."""

        if getattr(self, "_encoder_digest", None) is None:
            self._encoder_digest = encoder_fingerprint(self.model)
        fingerprint, extra = split_identity(data, split, self.model.config.image_size, self.image_processor)
        return image_embeds_path(cache_dir, fingerprint, self._encoder_digest, extra)

    @torch.no_grad()
    def embed_images(self, images) -> torch.Tensor:
        rgb = [image_to_rgb(image, self.model.config.image_size) for image in images]
        pixel_values = self.image_processor(rgb, return_tensors="pt")["pixel_values"].to(self.device)
        return self.model.encode_images(pixel_values).float().cpu()

    @torch.no_grad()
    def embed_texts(self, texts) -> torch.Tensor:
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, max_length=QUESTION_MAX_LENGTH,
                                return_tensors="pt").to(self.device)
        states = self.text_model(**tokens).last_hidden_state
        mask = tokens["attention_mask"][..., None].float()
        return ((states * mask).sum(1) / mask.sum(1)).float().cpu()


OFFLINE_BACKBONES = ("efficientnet_lite0",)


def load_backbone(name_or_path: str, device: str = "cpu", trust_remote_code: bool = False):
    """The frozen backbone behind a baseline: the offline encoders for `efficientnet_lite0`, open_clip for
    `hf-hub:` names, transformers otherwise."""
    if name_or_path in OFFLINE_BACKBONES:
        return OfflineBackbone(name_or_path, device)
    if is_open_clip_name(name_or_path):
        return OpenClipBackbone(name_or_path, device)
    return TransformersBackbone(name_or_path, device, trust_remote_code=trust_remote_code)


# ---------------------------------------------------------------------------------------------------------------
# Embedding one dataset split (cached)


@dataclass
class SplitEmbeddings:
    """A split as the MLP sees it: `image_embeds` (N, Di); `text_embeds` (Q, Dt), one row per distinct question
    text; `question_index` (N, S) the row of each (image, step) question; `labels` (N, S), -100 = missing."""

    image_embeds: torch.Tensor
    text_embeds: torch.Tensor
    question_index: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]


def step_question_texts(data, num_steps: int) -> list[list[str]]:
    """Per record, the question of each step as "Question: [text]" (from its vqa_chain; the schema's default
    question where a record has none)."""
    chains = data.select_columns(["vqa_chain"])["vqa_chain"] if "vqa_chain" in data.column_names else None
    texts = []
    for index in range(len(data)):
        chain = chains[index] if chains is not None else []
        row = []
        for step in range(num_steps):
            question = (chain[step].get("question") or "").strip() if step < len(chain) else ""
            row.append(QUESTION_PREFIX + (question or DEFAULT_STEP_QUESTIONS[step]))
        texts.append(row)
    return texts


def _cache_path(cache_dir: Path, data, split: str, backbone) -> Path:
    payload = json.dumps({
        "data": getattr(data, "_fingerprint", None), "split": split, "rows": len(data), "backbone": backbone.name,
        "weights": backbone.fingerprint(), "preprocessing": backbone.preprocessing(), "prefix": QUESTION_PREFIX,
    }, sort_keys=True, default=str)
    return cache_dir / f"baseline_embeds-{hashlib.sha256(payload.encode()).hexdigest()[:24]}.safetensors"


def embed_split(data, backbone, split: str, num_steps: int, cache_dir: Path | None = None,
                batch_size: int = 32) -> tuple[SplitEmbeddings, Path | None, bool]:
    """Embeddings of a `datasets` split (image + labels + vqa_chain columns), from the cache when present.
    Returns (embeddings, cache file or None, whether it was read from the cache)."""
    from safetensors.torch import load_file, save_file

    labels = torch.as_tensor(np.asarray(data["labels"], dtype=np.int64))
    path = _cache_path(Path(cache_dir), data, split, backbone) if cache_dir is not None else None
    if path is not None and path.is_file():
        stored = load_file(path)
        embeddings = SplitEmbeddings(stored["image_embeds"], stored["text_embeds"], stored["question_index"], labels)
        return embeddings, path, True
    texts = step_question_texts(data, num_steps)
    distinct = sorted({text for row in texts for text in row})
    row_of = {text: index for index, text in enumerate(distinct)}
    question_index = torch.tensor([[row_of[text] for text in row] for row in texts], dtype=torch.long)
    text_embeds = torch.cat([backbone.embed_texts(distinct[i:i + batch_size])
                             for i in range(0, len(distinct), batch_size)])
    training_cache = (backbone.training_cache_file(data, split, cache_dir)
                      if cache_dir is not None and hasattr(backbone, "training_cache_file") else None)
    cached = open_image_embeds(training_cache) if training_cache is not None and training_cache.is_dir() else None
    if cached is not None:  # the features `stepcot train` already computed
        image_embeds = cached.to_tensor()
        path = training_cache
    else:
        image_chunks = []
        for start in range(0, len(data), batch_size):
            image_chunks.append(backbone.embed_images(list(data[start:start + batch_size]["image"])))
        image_embeds = torch.cat(image_chunks)
    if path is not None and path != training_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"image_embeds": image_embeds.contiguous(), "text_embeds": text_embeds.contiguous(),
                   "question_index": question_index.contiguous()}, path,
                  metadata={"backbone": backbone.name, "split": split})
    return SplitEmbeddings(image_embeds, text_embeds, question_index, labels), path, path == training_cache


def backbone_display_name(name_or_path: str) -> str:
    return name_or_path.rstrip("/").split("/")[-1].removeprefix(OPEN_CLIP_PREFIX)


def backbone_slug(name_or_path: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name_or_path.removeprefix(OPEN_CLIP_PREFIX).strip("/")).strip("_")
