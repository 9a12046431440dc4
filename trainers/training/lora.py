"""LoRA adapters on a Step-CoT model's image encoder (peft), and merging them back for export.

The encoder's own weights stay frozen; only the low-rank adapters train. After training, `merge_vision_lora`
folds the adapters into the base weights, so the exported checkpoint is a plain Step-CoT model that loads through
remote code without peft.
"""

from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer

# Which layers get adapters, per backbone (full-match regexes on names inside `model.vision_encoder`).
# EfficientNet-Lite0 has none: its convolutions are a custom "same padding" Conv2d subclass that peft cannot
# wrap; fine-tune it fully (`--freeze_encoders False`) instead.
LORA_TARGETS = {
    "clip": r"model\.vision_model\.encoder\.layers\.\d+\.self_attn\.(q_proj|v_proj)",
}


def add_vision_lora(model, r: int, alpha: int | None = None, dropout: float = 0.0):
    """Inject rank-`r` LoRA adapters into `model.vision_encoder`; returns the number of trainable adapter weights."""
    if r <= 0:
        raise ValueError(f"LoRA rank must be positive, got {r}.")
    backbone = model.config.vision_backbone
    if backbone not in LORA_TARGETS:
        raise ValueError(
            f"LoRA adapters are available for the {sorted(LORA_TARGETS)} backbone(s), not {backbone!r}; "
            "use --freeze_encoders False to fine-tune it fully."
        )
    config = LoraConfig(r=r, lora_alpha=alpha or 2 * r, lora_dropout=dropout, target_modules=LORA_TARGETS[backbone])
    model.vision_encoder.requires_grad_(False)
    inject_adapter_in_model(config, model.vision_encoder)
    adapters = [p for n, p in model.vision_encoder.named_parameters() if "lora_" in n]
    if not adapters:
        raise ValueError(f"No {backbone} layer matched the LoRA targets {LORA_TARGETS[backbone]!r}.")
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
