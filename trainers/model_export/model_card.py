"""Model cards for exported Step-CoT models: Hub YAML metadata + the templates in `model_cards/`, filled with the
model's config, the training arguments and the evaluation table."""

import logging
from importlib import resources
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from trainers.model_export.card_metadata import metadata_problems
from trainers.model_loading import stepcot_classes

TEMPLATES = resources.files("model_cards")  # package data: also there in a non-editable install
PAPER = "arXiv:2603.13878"


def _steps_table(config) -> str:
    counts = getattr(config, "step_training_counts", None)
    rows = ["| # | Step | Question | Options (label = index) | Training labels |", "|---|---|---|---|---|"]
    for number, (name, question, options) in enumerate(
        zip(config.step_names, config.step_questions, config.step_options), 1
    ):
        if counts is None:
            trained = "not recorded"
        elif counts[number - 1]:
            trained = str(counts[number - 1])
        else:
            trained = "**none: not trained**"
        rows.append(f"| {number} | {name} | {question} | {' · '.join(options)} | {trained} |")
    untrained = [name for name, is_trained in zip(config.step_names, config.trained_steps) if not is_trained]
    if untrained:
        rows += ["", f"**Untrained steps** ({', '.join(untrained)}): the training data had no labels for them, so "
                     "their heads are random. `stepcot predict` and the `stepcot-vqa` pipeline report them as "
                     "unknown (no answer, no probabilities) and the consistency rules leave them out."]
    if getattr(config, "embedding_statistics", None):
        statistics = config.embedding_statistics
        rows += ["", f"**Out-of-distribution check**: the image embedding's distance to the training embeddings "
                     f"(RMS z-score) is compared with {statistics['threshold']:.2f}, the "
                     f"{100 * statistics.get('quantile', 0):g}th percentile on the {statistics.get('reference')} "
                     "split; images further out are flagged (`out_of_distribution` in the pipeline's output)."]
    return "\n".join(rows)


def _training_text(run_args: dict | None) -> str:
    if not run_args:
        return "Not recorded."
    lines = []
    for section in ("data", "distillation", "training", "model"):
        values = run_args.get(section)
        if values:
            lines.append(f"- **{section}**: " + ", ".join(f"`{k}={v}`" for k, v in values.items() if v is not None))
    for key in ("distillation_epochs", "eval_split", "feature_cache"):
        if key in run_args:
            lines.append(f"- {key}: `{run_args[key]}`")
    return "\n".join(lines)


def _count(model_config, role) -> tuple[str, str]:
    import torch

    with torch.device("meta"):  # this package's class: `from_config(trust_remote_code=True)` would import the
        model = stepcot_classes(model_config.model_type)[1](model_config)  # code named by the config's auto_map
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"{total / 1e6:.2f} M", f"{trained / 1e6:.2f} M"


def render_model_card(role: str, config, run_args: dict | None = None, metrics: dict | None = None,
                      table: str | None = None, repo_id: str | None = None, has_pipeline: bool = False) -> str:
    """The README.md of an exported teacher or student. `has_pipeline`: the folder carries the stepcot-vqa pipeline
    as remote code (`trainers.inference.predict.add_pipeline_to_checkpoint`), so the card shows the package-free
    usage."""
    if role not in ("teacher", "student"):
        raise ValueError(f"role must be 'teacher' or 'student', got {role!r}")
    data = (run_args or {}).get("data", {})
    dataset = data.get("dataset")
    synthetic = dataset == "demo"
    base_models = [m for m in (config.vision_encoder_name_or_path, getattr(config, "text_encoder_name_or_path", None))
                   if m and "/" in m and not Path(m).exists()]
    card_data = ModelCardData(
        license="other",
        license_name="research-only",
        library_name="transformers",
        pipeline_tag="visual-question-answering",
        tags=["medical", "chest-x-ray", "radiology", "step-cot", "chain-of-thought", "custom_code",
              "knowledge-distillation", role] + (["synthetic-data"] if synthetic else []),
        # A local folder (release or built dataset) is named by the Hub id of the Step-CoT release it holds.
        datasets=None if synthetic or not dataset else [
            dataset if "/" in dataset and not Path(dataset).exists() else "fl-15o/Step-CoT"],
        metrics=["accuracy", "roc_auc", "recall", "specificity", "f1", "precision"],
        base_model=base_models or None,
    )
    for problem in metadata_problems(card_data.to_dict()):  # warn only: never fail an export after training
        logging.getLogger("stepcot.model_card").warning("%s model card metadata: %s", role, problem)
    parameters, trainable = _count(config, role)
    evaluation = table or "Not evaluated."
    if metrics:
        evaluation = (f"Mean over steps: accuracy {metrics.get('mean_accuracy', float('nan')):.3f}, "
                      f"AUC {metrics.get('mean_auc', float('nan')):.3f}.\n\n" + evaluation)
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATES / f"{role}.md"),
        repo_id=repo_id or f"<user>/stepcot-{role}",
        dataset_name="the synthetic stepcot demo" if synthetic else dataset,
        step_chain=" → ".join(config.step_names),
        vision_encoder=config.vision_encoder_name_or_path or "random init",
        vision_backbone=config.vision_backbone,
        frozen_vision=config.freeze_vision_encoder,
        image_size=config.image_size,
        text_encoder=getattr(config, "text_encoder_name_or_path", None) or "random init",
        use_text=getattr(config, "use_text", True),
        use_memory=getattr(config, "use_memory", True),
        hidden_size=config.hidden_size,
        gat_layers=getattr(config, "gat_num_layers", None),
        gat_heads=getattr(config, "gat_num_heads", None),
        parameters=parameters,
        trainable_parameters=trainable,
        steps_table=_steps_table(config),
        evaluation=evaluation,
        training=_training_text(run_args),
        synthetic=synthetic,
        has_pipeline=has_pipeline,
    )
    return str(card)


def write_model_card(folder, role, config, **kwargs) -> Path:
    import json

    config_file = Path(folder) / "config.json"
    if "has_pipeline" not in kwargs and config_file.is_file():
        kwargs["has_pipeline"] = "stepcot-vqa" in json.loads(config_file.read_text()).get("custom_pipelines", {})
    path = Path(folder) / "README.md"
    path.write_text(render_model_card(role, config, **kwargs), encoding="utf-8")
    return path
