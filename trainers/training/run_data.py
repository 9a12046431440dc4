"""Data of a training run: the splits, the step schema read from them, and the datasets the trainer reads
(cached image features with frozen encoders, else decoded images)."""

import logging
from pathlib import Path

import torch

from dataset_script.parquet_export import built_step_schema
from dataset_script.sources import load_built, prepare_source
from modeling_stepcot.configuration_stepcot import (
    DEFAULT_STEP_NAMES,
    DEFAULT_STEP_OPTIONS,
    DEFAULT_STEP_QUESTIONS,
)
from modeling_stepcot.processing_stepcot import StepCoTDataCollator
from trainers.evaluation.evaluate_model import chain_schema
from trainers.training.extraction import extract_image_embeds
from trainers.training.feature_cache import (
    EmbeddingDataset,
    cached_image_embeds,
    encoder_fingerprint,
    split_identity,
)

logger = logging.getLogger("stepcot.train")


def load_splits(data_args, output_dir: Path):
    """A `DatasetDict` with `image` and `labels` columns from the demo, a release folder, a built folder or the Hub
    (`dataset_script.sources`: a release is built into OUTPUT_DIR/dataset, rebuilt when it changed)."""
    built = prepare_source(data_args.dataset, output_dir, lenient=data_args.lenient, seed=data_args.split_seed,
                           demo_size=data_args.demo_size,
                           demo_image_size=data_args.demo_image_size, demo_difficulty=data_args.demo_difficulty,
                           log=logger.info)
    splits = load_built(built)
    # The step names the build recorded (the records' chains carry questions and options, not names): read by
    # `dataset_schema` so that a release with its own steps trains and exports a model that names them.
    splits.step_names = [step.get("name") for step in built_step_schema(built) or []] or None
    return splits


def prepare_splits(data_args, training_args, output_dir: Path):
    """The dataset's splits (built once, by the main process first) and the split used for the final evaluation."""
    with training_args.main_process_first(desc="dataset"):
        splits = load_splits(data_args, output_dir)
    for required in ("train", "validation"):
        if required not in splits:
            raise ValueError(f"The dataset {data_args.dataset} has no {required!r} split (splits: {list(splits)}).")
    eval_split = data_args.eval_split
    if eval_split not in splits:
        raise ValueError(
            f"The dataset {data_args.dataset} has no {eval_split!r} split for the final evaluation (splits: "
            f"{list(splits)}). Validation selects the best checkpoint, so scoring on it is optimistic: pass "
            "--eval_split validation to do so knowingly."
        )
    if data_args.max_train_samples is not None:
        splits["train"] = splits["train"].select(range(min(data_args.max_train_samples, len(splits["train"]))))
    return splits, eval_split


def _label_count(train_split) -> int:
    """Steps per record: the fixed length of the `labels` feature, else the first record's."""
    length = getattr(train_split.features.get("labels"), "length", -1)
    if length is not None and length > 0:
        return int(length)
    if len(train_split) == 0:
        raise ValueError("the training split is empty: cannot tell how many steps the data has.")
    return len(train_split[0]["labels"])


def dataset_schema(train_split, step_names: list[str] | None = None) -> dict:
    """The step schema of the training data: its step names (`step_names`, as the build recorded them), questions
    and options (its records' `vqa_chain`, the most common per step), so the model asks the release's questions and
    names the release's steps and options; {} when the data carries no chains (the package defaults apply).

    Seven-step data without recorded names is Step-CoT data: steps it leaves empty keep the defaults. Data with
    another number of steps is a schema of its own (e.g. one "Diagnosis" step); unnamed steps are "Step i"."""

    num_steps = _label_count(train_split)
    schema = chain_schema(train_split, num_steps)
    if schema is None:
        if num_steps != len(DEFAULT_STEP_NAMES):
            raise ValueError(f"the data has {num_steps} steps per record but no vqa_chain column to name their "
                             "options; build it with `stepcot data build` or `stepcot data import`.")
        return {}
    if step_names is not None and len(step_names) != num_steps:
        logger.warning("the build recorded %d step names for %d steps per record; names not used",
                       len(step_names), num_steps)
        step_names = None
    names = list(step_names or (DEFAULT_STEP_NAMES if num_steps == len(DEFAULT_STEP_NAMES) else
                                [f"Step {step + 1}" for step in range(num_steps)]))
    step_cot = names == list(DEFAULT_STEP_NAMES)
    empty = [step + 1 for step, options in enumerate(schema["step_options"]) if options is None]
    if empty and not step_cot:
        raise ValueError(f"steps {empty} of the data have no chain entries: their options are unknown.")
    defaults = zip(DEFAULT_STEP_QUESTIONS, DEFAULT_STEP_OPTIONS) if step_cot else [(None, None)] * num_steps
    questions, options = [], []
    for question, step_options, (default_question, default_options) in zip(
            schema["step_questions"], schema["step_options"], defaults):
        questions.append(question or default_question or "")
        options.append(step_options or list(default_options))
    for step, variants in enumerate(schema["variants"]):
        if variants > 1:
            logger.warning("step %d: %d different option lists in the training data; the model uses the most "
                           "common, %s", step + 1, variants, options[step])
    result = {"step_questions": questions, "step_options": options}
    if not step_cot:  # the seven Step-CoT names are the config's default
        result["step_names"] = names
    return result


def feature_datasets(splits, models: dict, processor, cache_dir, training_args, share_encoder=False, data_args=None):
    """Cached-feature datasets per split: one encoder pass per image and encoder, reused across runs.

    `models` maps a role ("teacher", and optionally "student") to its model; with `share_encoder` the student reads
    the teacher's features (same frozen encoder). Under a multi-process launch every rank encodes its part
    of each cache shard (`extraction.extract_image_embeds`) and rank 0 writes it."""
    workers = data_args.extraction_workers if data_args is not None else 0
    bf16 = bool(data_args is not None and data_args.extraction_bf16)
    roles = {role: model for role, model in models.items() if not (role == "student" and share_encoder)}
    digests = {role: encoder_fingerprint(model) for role, model in roles.items()}  # hash the weights once
    result = {}
    for name, dataset in splits.items():
        fingerprint, extras = split_identity(dataset, name, processor.image_size, processor.image_processor)
        if bf16:
            extras = {**extras, "autocast": "bf16"}  # other features than fp32: their own cache entry
        embeds = {}
        for role, model in roles.items():
            def encode_rows(start, stop, model=model, role=role):
                return extract_image_embeds(model, dataset, processor, training_args.per_device_eval_batch_size,
                                            workers, training_args.device, bf16, f"{role} image features ({name})",
                                            rows=range(start, stop))

            embeds[role], path, hit = cached_image_embeds(
                model, None, fingerprint, cache_dir, extra=extras, encoder_digest=digests[role],
                num_rows=len(dataset), encode_rows=encode_rows,
            )
            if training_args.world_size > 1:
                torch.distributed.barrier()  # the cache file is complete before any rank looks for the next one
            logger.info("%s %s features %s %s", name, role, "read from" if hit else "written to", path)
        result[name] = EmbeddingDataset(embeds["teacher"], dataset["labels"], embeds.get("student"))
    return result


def pixel_datasets(splits, processor):
    return {name: dataset.with_transform(processor.dataset_transform) for name, dataset in splits.items()}


def training_datasets(splits, models: dict, processor, data_args, training_args, output_dir, share_encoder=False):
    """Cached-feature datasets when every encoder is frozen (and the cache is on), else lazily decoded images with
    the Step-CoT collator. Returns (datasets by split, data collator, whether the cache is used)."""
    frozen = not any(model.vision_encoder_is_trainable() for model in models.values())
    if data_args.feature_cache and frozen:
        cache_dir = Path(data_args.cache_dir or output_dir / "cache")
        datasets_by_split = feature_datasets(splits, models, processor, cache_dir, training_args, share_encoder,
                                             data_args)
        data_collator, use_cache = None, True  # the default collator stacks the cached rows
    else:
        datasets_by_split, use_cache = pixel_datasets(splits, processor), False
        data_collator = StepCoTDataCollator(processor)
    logger.info("training on %s (%d train / %d validation)", "cached image features" if use_cache else "images",
                len(splits["train"]), len(splits["validation"]))
    return datasets_by_split, data_collator, use_cache


def fit_image_standardization(models: dict, splits, datasets_by_split, processor, training_args, use_cache,
                              fresh_roles=("teacher", "student")) -> list[str]:
    """Fit `standardize_image_embeds` of the freshly built models in `models` (role -> model) to the training
    split's embeddings: the cached features when the run uses the cache, else one pass of each frozen encoder.
    Returns the roles fitted."""
    fitted = []
    for role, model in models.items():
        if role not in fresh_roles or not model.config.standardize_image_embeds:
            continue
        if use_cache:
            train = datasets_by_split["train"]
            cached = train.student_image_embeds if role == "student" and train.student_image_embeds is not None \
                else train.image_embeds
            embeds = cached.numpy() if hasattr(cached, "numpy") else cached
        else:
            embeds = extract_image_embeds(model, splits["train"], processor,
                                          training_args.per_device_eval_batch_size, 0, training_args.device,
                                          description=f"{role} image features (standardisation)")
        model.set_image_embed_standardization(embeds)
        fitted.append(role)
    return fitted
