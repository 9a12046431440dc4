"""LoRA adapters on a Step-CoT model's image encoder (peft), and merging them back for export.

The encoder's own weights stay frozen; only the low-rank adapters train. After training, `merge_vision_lora`
folds the adapters into the base weights, so the exported checkpoint is a plain Step-CoT model that loads through
remote code without peft.
"""

from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer

from modeling_stepcot.backbones_stepcot import VISION_ENCODERS


def add_vision_lora(model, r: int, alpha: int | None = None, dropout: float = 0.0):
    """Inject rank-`r` LoRA adapters into `model.vision_encoder`; returns the number of trainable adapter weights."""
    if r <= 0:
        raise ValueError(f"LoRA rank must be positive, got {r}.")
    backbone = model.config.vision_backbone
    # Which layers get adapters is the backbone's fact (a full-match regex on names inside `model.vision_encoder`).
    targets = model.vision_encoder.lora_target_modules
    if targets is None:
        supported = sorted(name for name, encoder in VISION_ENCODERS.items() if encoder.lora_target_modules)
        raise ValueError(
            f"LoRA adapters are available for the {supported} backbone(s), not {backbone!r}; "
            "use --freeze_encoders False to fine-tune it fully."
        )
    config = LoraConfig(r=r, lora_alpha=alpha or 2 * r, lora_dropout=dropout, target_modules=targets)
    model.vision_encoder.requires_grad_(False)
    inject_adapter_in_model(config, model.vision_encoder)
    adapters = [p for n, p in model.vision_encoder.named_parameters() if "lora_" in n]
    if not adapters:
        raise ValueError(f"No {backbone} layer matched the LoRA targets {targets!r}.")
    for parameter in adapters:
        parameter.requires_grad_(True)
    return sum(p.numel() for p in adapters)


def merge_vision_lora(model) -> int:
    """Fold every LoRA adapter of `model` into its base layer and put the plain layer back; returns how many."""
    merged = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child_name = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child_name, module.get_base_layer())
            merged += 1
    model.vision_encoder.requires_grad_(False)
    return merged
