"""Export a trained model as a complete Hub folder: weights + remote code, processor, pipeline, model card."""

from pathlib import Path

from trainers.inference.predict import add_pipeline_to_checkpoint
from trainers.model_export.model_card import write_model_card
from trainers.model_loading import stamp_step_options
from trainers.training.lora import merge_vision_lora
from trainers.training.offline_encoders import portable_encoder_name


def make_config_portable(config) -> None:
    """Replace the local paths a config records (pretrained encoder names, sub-configs' `_name_or_path`) by names a
    user elsewhere can resolve (`portable_encoder_name`): an exported folder names no path of this machine."""
    for field, sub_config in (("vision_encoder_name_or_path", "vision_config"),
                              ("text_encoder_name_or_path", "text_config")):
        name = portable_encoder_name(getattr(config, field, None))
        if hasattr(config, field):
            setattr(config, field, name)
        sub = getattr(config, sub_config, None)
        if sub is not None:
            sub._name_or_path = name or ""


def export(models: dict, processor, output_dir: Path, results: dict, run_args: dict, table: str):
    """Each model to OUTPUT_DIR/ROLE: weights (with a fingerprint of the step options) + code, processor, the
    pipeline, and a filled-in model card."""
    for role, model in models.items():
        folder = output_dir / role
        if run_args["model"].get("lora_r"):
            merge_vision_lora(model)  # the export is a plain Step-CoT model: no peft needed to load it
        make_config_portable(model.config)
        model.save_pretrained(folder)
        stamp_step_options(folder, model.config.step_options)  # loaders warn when config.json's options differ
        processor.save_pretrained(folder)
        add_pipeline_to_checkpoint(folder)  # `pipeline(model=folder, trust_remote_code=True)` without this package
        write_model_card(folder, role, model.config, run_args=run_args, metrics=results.get(role), table=table)
