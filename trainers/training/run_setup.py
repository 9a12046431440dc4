"""Run set-up shared by the training scripts (`run_distill.py`, `run_teacher.py`): arguments, data, models,
feature caches, scoring."""

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, HfArgumentParser, set_seed

from dataset_script.sources import load_source
from modeling_stepcot import StepCoTProcessor, StepCoTStudent, StepCoTTeacher
from modeling_stepcot.processing_stepcot import StepCoTDataCollator
from trainers.evaluation.metrics import compute_step_metrics
from trainers.evaluation.report import markdown_table, write_report
from trainers.training.feature_cache import EmbeddingDataset, cached_image_embeds, encoder_fingerprint
from trainers.training.offline_encoders import OFFLINE_VISION_ENCODER, offline_text_encoder_path

logger = logging.getLogger("stepcot.train")

OFFLINE_TEXT = "offline-minilm"


@dataclass
class ModelArguments:
    vision_encoder: str = field(
        default=OFFLINE_VISION_ENCODER,
        metadata={"help": "CLIP checkpoint (paper: openai/clip-vit-base-patch32) or 'efficientnet_lite0' (offline)."},
    )
    text_encoder: str = field(
        default=OFFLINE_TEXT,
        metadata={"help": "BERT-family checkpoint for the questions (paper: bert-base-uncased) or 'offline-minilm'."},
    )
    teacher_hidden_size: int = field(default=768, metadata={"help": "teacher width H (paper: 768)"})
    student_hidden_size: int = field(default=512, metadata={"help": "student width (paper: 512)"})
    use_memory: bool = field(default=True, metadata={"help": "False: the 'w/o Memory' ablation"})
    use_text: bool = field(default=True, metadata={"help": "False: the 'w/o Text' ablation"})
    freeze_encoders: bool = field(default=True, metadata={"help": "keep image and text encoders frozen (paper)"})
    teacher_model: str | None = field(default=None, metadata={"help": "start from a saved teacher folder"})
    student_model: str | None = field(default=None, metadata={"help": "start from a saved student folder"})
    lora_r: int = field(
        default=0, metadata={"help": "rank of LoRA adapters on both image encoders (0: none); merged at export"}
    )
    image_size: int | None = field(
        default=None,
        metadata={"help": "input size for the efficientnet_lite0 backbone (CLIP fixes its own); default 224"},
    )


@dataclass
class DataArguments:
    dataset: str = field(
        default="demo",
        metadata={
            "help": "'demo' (render the synthetic set), a release folder (data.json), a built folder, or a Hub id"
        },
    )
    demo_size: int = field(default=1200, metadata={"help": "records in the synthetic demo"})
    demo_image_size: int = field(default=224)
    demo_difficulty: str = field(
        default="easy", metadata={"help": "synthetic demo variant: 'easy' (default) or 'hard' (subtle lesions, "
                                          "overlapping anatomy, 4 per cent label noise)", "choices": ["easy", "hard"]}
    )
    eval_split: str = field(default="test", metadata={"help": "split for the final evaluation"})
    feature_cache: bool = field(
        default=True, metadata={"help": "with frozen encoders, encode every image once and train on cached features"}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "feature cache folder (default OUTPUT_DIR/cache)"})
    max_train_samples: int | None = field(default=None)
    num_bootstrap: int = field(
        default=1000, metadata={"help": "bootstrap resamples for the final confidence intervals"}
    )
    lenient: bool = field(default=False, metadata={"help": "skip (and report) bad records instead of failing"})


TRAINING_DEFAULTS = dict(
    output_dir="outputs/stepcot",
    per_device_train_batch_size=32,
    per_device_eval_batch_size=64,
    num_train_epochs=40,
    max_grad_norm=1.0,
    eval_strategy="epoch",
    save_strategy="epoch",
    save_total_limit=1,
    logging_steps=10,
    report_to="none",
    remove_unused_columns=False,
    label_names=["labels"],
    ddp_find_unused_parameters=False,
    dataloader_num_workers=0,
    seed=42,
)


def parse_run_args(argument_classes, argv=None, **defaults):
    """HfArgumentParser over `argument_classes` (TrainingArguments last) with the Step-CoT training defaults."""
    parser = HfArgumentParser(argument_classes)
    parser.set_defaults(**{**TRAINING_DEFAULTS, **defaults})
    if not (torch.cuda.is_available() or torch.backends.mps.is_available()):
        # accelerate treats a multi-process launch as DDP on CPU (gloo) only when told it runs on the CPU
        parser.set_defaults(use_cpu=True)
    return parser.parse_args_into_dataclasses(args=argv)


def start_run(training_args) -> Path:
    """Logging, seed, output folder and device set-up shared by the training scripts; returns the output folder."""
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=logging.INFO, stream=sys.stdout)
    for noisy in ("httpx", "datasets", "transformers.modeling_utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    set_seed(training_args.seed)
    output_dir = Path(training_args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        training_args.dataloader_pin_memory = False
    _ = training_args.device  # sets up the process group, so main_process_first really waits
    return output_dir


# ---------------------------------------------------------------------------------------------------------------
# data


def load_splits(data_args, output_dir: Path):
    """A `DatasetDict` with `image` and `labels` columns from the demo, a release folder, a built folder or the Hub
    (`dataset_script.sources`: a release is built into OUTPUT_DIR/dataset, rebuilt when it changed)."""
    return load_source(data_args.dataset, output_dir, lenient=data_args.lenient, demo_size=data_args.demo_size,
                       demo_image_size=data_args.demo_image_size, demo_difficulty=data_args.demo_difficulty,
                       log=logger.info)


def _image_size_kwargs(model_args):
    if model_args.image_size is None:
        return {}
    if model_args.vision_encoder != OFFLINE_VISION_ENCODER:
        raise ValueError("--image_size applies to the efficientnet_lite0 backbone; a CLIP checkpoint fixes its own.")
    return {"image_size": model_args.image_size}


def dataset_schema(train_split) -> dict:
    """The step questions and options of the training data (its records' `vqa_chain`, the most common per step), so
    the model asks the release's questions and names the release's options; {} when the data carries no chains (the
    package defaults apply). Steps a release leaves empty keep the defaults."""
    from modeling_stepcot.configuration_stepcot import DEFAULT_STEP_NAMES, DEFAULT_STEP_OPTIONS, DEFAULT_STEP_QUESTIONS
    from trainers.evaluation.evaluate_model import chain_schema

    schema = chain_schema(train_split, len(DEFAULT_STEP_NAMES))
    if schema is None:
        return {}
    questions = [q or default for q, default in zip(schema["step_questions"], DEFAULT_STEP_QUESTIONS)]
    options = [o or list(default) for o, default in zip(schema["step_options"], DEFAULT_STEP_OPTIONS)]
    for step, variants in enumerate(schema["variants"]):
        if variants > 1:
            logger.warning("step %d: %d different option lists in the training data; the model uses the most "
                           "common, %s", step + 1, variants, options[step])
    return {"step_questions": questions, "step_options": options}


def _adopt_schema(model, schema: dict, source: str):
    """A saved model trained on the same classes takes the data's questions / option names; other class counts fail."""
    if not schema:
        return model
    config = model.config
    counts = [len(options) for options in schema["step_options"]]
    if counts != config.num_classes_per_step:
        raise ValueError(f"{source} has {config.num_classes_per_step} classes per step but the training data has "
                         f"{counts}: its heads cannot be trained on these labels.")
    if schema["step_options"] != config.step_options:
        logger.warning("%s: option names taken from the training data (%s differ from the model's)", source,
                       [i + 1 for i, (a, b) in enumerate(zip(schema["step_options"], config.step_options)) if a != b])
        config.step_options = [list(options) for options in schema["step_options"]]
    if isinstance(model, StepCoTTeacher) and schema["step_questions"] != config.step_questions:
        raise ValueError(f"{source} was trained with other step questions than the training data's; its question "
                         "encodings would not match. Train the teacher from the encoders instead.")
    return model


def build_teacher(model_args, schema: dict | None = None):
    """The teacher: a saved one (`--teacher_model`), or built around the encoders with the data's `schema`
    (`dataset_schema`: step questions and options)."""
    schema = schema or {}
    if model_args.teacher_model:
        return _adopt_schema(StepCoTTeacher.from_pretrained(model_args.teacher_model), schema,
                             model_args.teacher_model)
    text = offline_text_encoder_path() if model_args.text_encoder == OFFLINE_TEXT else model_args.text_encoder
    return StepCoTTeacher.from_pretrained_encoders(
        vision=model_args.vision_encoder, text=text, freeze_encoders=model_args.freeze_encoders,
        hidden_size=model_args.teacher_hidden_size, use_memory=model_args.use_memory, use_text=model_args.use_text,
        **_image_size_kwargs(model_args), **schema,
    )


def build_student(model_args, schema: dict | None = None):
    schema = {k: v for k, v in (schema or {}).items()}
    if model_args.student_model:
        return _adopt_schema(StepCoTStudent.from_pretrained(model_args.student_model), schema,
                             model_args.student_model)
    return StepCoTStudent.from_pretrained_encoders(
        vision=model_args.vision_encoder, freeze_encoders=model_args.freeze_encoders,
        hidden_size=model_args.student_hidden_size, **_image_size_kwargs(model_args), **schema,
    )


def build_processor(teacher):
    text = teacher.config.text_encoder_name_or_path or offline_text_encoder_path()
    return StepCoTProcessor.from_model_config(teacher.config, AutoTokenizer.from_pretrained(text))


def _pixels_of_batch(batch):
    return batch["pixel_values"]


def _pixel_batches(dataset, processor, batch_size, num_workers):
    # Index the dataset with whole batches: the processor then preprocesses a batch in one call.
    batches = torch.utils.data.BatchSampler(torch.utils.data.SequentialSampler(dataset), batch_size, drop_last=False)
    loader = torch.utils.data.DataLoader(
        dataset.with_transform(processor.dataset_transform), sampler=batches, batch_size=None,
        num_workers=num_workers, collate_fn=_pixels_of_batch,
    )
    return loader, len(batches)


def feature_datasets(splits, models: dict, processor, cache_dir, training_args, share_encoder=False):
    """Cached-feature datasets per split: one encoder pass per image and encoder, reused across runs.

    `models` maps a role ("teacher", and optionally "student") to its model; with `share_encoder` the student reads
    the teacher's features (same frozen encoder)."""
    roles = {role: model for role, model in models.items() if not (role == "student" and share_encoder)}
    digests = {role: encoder_fingerprint(model) for role, model in roles.items()}  # hash the weights once
    result = {}
    for name, dataset in splits.items():
        fingerprint = f"{dataset._fingerprint}:{name}:{len(dataset)}:{processor.image_size}"
        extras = {"mean": processor.image_processor.image_mean, "std": processor.image_processor.image_std}
        embeds = {}
        for role, model in roles.items():
            with training_args.main_process_first(desc=f"{role} image features ({name})"):
                loader, total = _pixel_batches(dataset, processor, training_args.per_device_eval_batch_size,
                                               training_args.dataloader_num_workers)
                embeds[role], path, hit = cached_image_embeds(
                    model, loader, fingerprint, cache_dir, total=total, extra=extras, encoder_digest=digests[role]
                )
            logger.info("%s %s features %s %s", name, role, "read from" if hit else "written to", path)
        result[name] = EmbeddingDataset(embeds["teacher"], dataset["labels"], embeds.get("student"))
    return result


def pixel_datasets(splits, processor):
    return {name: dataset.with_transform(processor.dataset_transform) for name, dataset in splits.items()}


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
    if data_args.max_train_samples:
        splits["train"] = splits["train"].select(range(min(data_args.max_train_samples, len(splits["train"]))))
    return splits, eval_split


def training_datasets(splits, models: dict, processor, data_args, training_args, output_dir, share_encoder=False):
    """Cached-feature datasets when every encoder is frozen (and the cache is on), else lazily decoded images with
    the Step-CoT collator. Returns (datasets by split, data collator, whether the cache is used)."""
    frozen = not any(model.vision_encoder_is_trainable() for model in models.values())
    if data_args.feature_cache and frozen:
        cache_dir = Path(data_args.cache_dir or output_dir / "cache")
        datasets_by_split = feature_datasets(splits, models, processor, cache_dir, training_args, share_encoder)
        data_collator, use_cache = None, True  # the default collator stacks the cached rows
    else:
        datasets_by_split, use_cache = pixel_datasets(splits, processor), False
        data_collator = StepCoTDataCollator(processor)
    logger.info("training on %s (%d train / %d validation)", "cached image features" if use_cache else "images",
                len(splits["train"]), len(splits["validation"]))
    return datasets_by_split, data_collator, use_cache


# ---------------------------------------------------------------------------------------------------------------
# scoring


def score_and_report(role_logits: dict, labels, split, output_dir, num_bootstrap, config, write=True):
    """Metrics with bootstrap CIs for each role's padded logits; reports under OUTPUT_DIR/metrics/ROLE."""
    results, runs = {}, []
    for role, logits in role_logits.items():
        metrics = compute_step_metrics(
            np.asarray(logits), np.asarray(labels), step_names=config.step_names, step_options=config.step_options,
            scores="logits", num_bootstrap=num_bootstrap, metadata={"model": role, "split": split},
        )
        if write:
            write_report(metrics, output_dir / "metrics" / role, model_name=role.capitalize())
        runs.append((role.capitalize(), metrics))
        results[role] = metrics.flat()
    return results, markdown_table(runs)


def print_summary(output_dir: Path, eval_split: str, table: str, roles):
    print("\n" + table)
    folders = " and ".join(str(output_dir / role) for role in roles)
    print(f"\nCheckpoints: {folders} (load with AutoModel.from_pretrained(..., trust_remote_code=True))")
    print(f"Metrics ({eval_split} split): {output_dir / 'metrics'}; summary: {output_dir / 'results.json'}")


def load_best(pair, output_dir: Path):
    """Put the best teacher and best student (by mean validation accuracy) back into the pair, where saved."""
    for role in ("teacher", "student"):
        weights = output_dir / "best" / role / "model.safetensors"
        if weights.is_file():
            getattr(pair, role).load_state_dict(load_file(weights))
