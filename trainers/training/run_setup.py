"""Run set-up shared by the training scripts (`run_distill.py`, `run_teacher.py`): arguments, data, models,
feature caches, scoring."""

import argparse
import copy
import logging
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, HfArgumentParser, set_seed

from dataset_script.parquet_export import built_step_schema
from dataset_script.sources import load_built, prepare_source
from modeling_stepcot import StepCoTProcessor, StepCoTStudent, StepCoTTeacher
from modeling_stepcot.configuration_stepcot import (
    DEFAULT_STEP_NAMES,
    DEFAULT_STEP_OPTIONS,
    DEFAULT_STEP_QUESTIONS,
    IGNORE_INDEX,
)
from modeling_stepcot.ood_stepcot import embedding_statistics
from modeling_stepcot.processing_stepcot import StepCoTDataCollator
from trainers.console import configure_console, pop_verbose_flag
from trainers.evaluation.evaluate_model import chain_schema
from trainers.evaluation.linear_probe import baseline_scores
from trainers.evaluation.metrics import compute_step_metrics, paired_difference, to_step_probabilities
from trainers.evaluation.report import markdown_table, strict_json, write_report
from trainers.model_export.export import export
from trainers.training.checkpoints import TrainingError, resolve_resume_checkpoint
from trainers.training.extraction import extract_image_embeds
from trainers.training.feature_cache import (
    EmbeddingDataset,
    cached_image_embeds,
    encoder_fingerprint,
    split_identity,
)
from trainers.training.offline_encoders import OFFLINE_VISION_ENCODER, local_encoder_path, offline_text_encoder_path
from trainers.training.run_folder import check_writable, open_run

logger = logging.getLogger("stepcot.train")

OFFLINE_TEXT = "offline-minilm"
DIFFERENCES_FILENAME = "paired_differences.txt"  # under OUTPUT_DIR/metrics: model − linear probe per step


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
    recipe: str = field(
        default="auto",
        metadata={"help": "auto: early stopping on the validation loss for real data (a release, built folder or Hub "
                          "set) and the paper's fixed epochs for the synthetic demo; paper: the paper's fixed epochs "
                          "(best checkpoints by validation accuracy), unchanged; early-stopping: always stop early",
                  "choices": ["auto", "paper", "early-stopping"]},
    )
    early_stopping_patience: int = field(
        default=5, metadata={"help": "with early stopping: epochs without a lower validation loss before stopping"}
    )
    split_seed: int = field(
        default=0, metadata={"help": "seed of the patient-grouped 70/15/15 split of a release without split files "
                                     "(separate from --seed, which seeds training only)"}
    )
    feature_cache: bool = field(
        default=True, metadata={"help": "with frozen encoders, encode every image once and train on cached features"}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "feature cache folder (default OUTPUT_DIR/cache)"})
    extraction_workers: int = field(
        default=2, metadata={"help": "DataLoader workers decoding and preprocessing images for the feature cache"}
    )
    extraction_bf16: bool = field(
        default=False, metadata={"help": "encode the feature cache under bf16 autocast (faster; ~1e-3 relative)"}
    )
    max_train_samples: int | None = field(default=None)
    num_bootstrap: int = field(
        default=1000, metadata={"help": "bootstrap resamples for the final confidence intervals"}
    )
    lenient: bool = field(default=False, metadata={"help": "skip (and report) bad records instead of failing"})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "remove an earlier run's outputs from OUTPUT_DIR and start over"}
    )


# The `TrainingArguments` options `--help` shows next to the recipe's own (`--help-all` lists every one).
COMMON_TRAINING_OPTIONS = (
    "output_dir", "num_train_epochs", "max_steps", "per_device_train_batch_size", "per_device_eval_batch_size",
    "gradient_accumulation_steps", "learning_rate", "weight_decay", "lr_scheduler_type", "max_grad_norm",
    "eval_strategy", "save_strategy", "save_total_limit", "logging_steps", "seed", "bf16", "use_cpu",
    "resume_from_checkpoint", "report_to",
)
HELP_ALL_FLAG = "--help-all"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Argument defaults in the help, and the script's docstring (with its examples) kept as written."""


def _short_help(parser, argument_classes, prog, help_text) -> str:
    """The recipe's own options first (the config's fields that `TrainingArguments` lacks), then the model and data
    options, then the common `TrainingArguments` ones; each option under its underscore spelling only."""
    from dataclasses import fields as dataclass_fields

    from transformers import TrainingArguments

    inherited = {f.name for f in dataclass_fields(TrainingArguments)}
    by_dest = {}
    for action in parser._actions:  # a boolean's `--name` comes before its `--no_name`
        by_dest.setdefault(action.dest, action)
    sections = []
    for cls in argument_classes:
        names = [f.name for f in dataclass_fields(cls) if f.init]
        if issubclass(cls, TrainingArguments):
            own = [name for name in names if name not in inherited]
            if own:
                sections.insert(0, (f"{cls.__name__} (the recipe)", own))
            unused = {f.name for f in dataclass_fields(cls) if f.name in inherited
                      and str(f.metadata.get("help", "")).startswith("not used")}
            sections.append(("training (TrainingArguments; --help-all lists them all)",
                             [name for name in COMMON_TRAINING_OPTIONS if name in names and name not in unused]))
        else:
            sections.append((cls.__name__.replace("Arguments", "").lower(), names))
    summary = "\n\n".join((help_text or "").split("\n\n")[:2])  # what it does and the examples
    width = min(119, max(100, shutil.get_terminal_size().columns - 2))
    display = argparse.ArgumentParser(
        prog=prog, description=summary or None, add_help=False,
        formatter_class=lambda prog: _HelpFormatter(prog, width=width, max_help_position=36),
        usage=f"%(prog)s [--option VALUE ...]   ({HELP_ALL_FLAG}: every TrainingArguments option)",
        epilog="--verbose: show every message of the libraries (transformers, datasets) too",
    )
    for title, names in sections:
        group = display.add_argument_group(title)
        for name in names:
            action = copy.copy(by_dest[name])
            action.option_strings = action.option_strings[:1]
            group._add_action(action)
    return display.format_help()


def build_run_parser(argument_classes, *, help_text: str | None = None, prog: str | None = None):
    """`HfArgumentParser` over `argument_classes` (the training config last): `--help` is short (see `_short_help`),
    `--help-all` is the full listing."""
    parser = HfArgumentParser(argument_classes, prog=prog, description=help_text, formatter_class=_HelpFormatter,
                              epilog="--verbose: show every message of the libraries (transformers, datasets) too")
    full_help = parser.format_help
    short = _short_help(parser, argument_classes, parser.prog, help_text)

    class _HelpAll(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            print(full_help())
            parser.exit()

    parser.add_argument(HELP_ALL_FLAG, nargs=0, action=_HelpAll, default=argparse.SUPPRESS,
                        help="list every option, TrainingArguments' too")
    parser.format_help = lambda: short
    return parser


def parse_run_args(argument_classes, argv=None, *, help_text: str | None = None, prog: str | None = None):
    """Parse a training script's arguments into `argument_classes` (the training config last; its defaults are the
    recipe's). `--verbose` (show every library message) is taken out of `argv` here; `help_text` heads the help."""
    argv = pop_verbose_flag(list(sys.argv[1:] if argv is None else argv))
    parser = build_run_parser(argument_classes, help_text=help_text, prog=prog)
    parsed = parser.parse_args_into_dataclasses(args=argv)
    validate_run_args(*parsed)
    return parsed


# (field, smallest allowed value, strictly greater?) checked on whichever argument objects have the field
# The distillation recipe's own fields are checked by `StepCoTDistillationConfig.__post_init__`.
_ARGUMENT_BOUNDS = (
    ("per_device_train_batch_size", 1, False), ("per_device_eval_batch_size", 1, False),
    ("gradient_accumulation_steps", 1, False), ("max_train_samples", 1, False), ("demo_size", 1, False),
    ("num_train_epochs", 0, True), ("learning_rate", 0, False), ("lora_r", 0, False),
    ("extraction_workers", 0, False), ("early_stopping_patience", 1, False),
)


def validate_run_args(*argument_objects):
    """One-line errors for values that would otherwise fail late (batch size 0), silently (--max_train_samples 0
    trained on everything) or numerically (--temperature 0 divides by zero)."""
    for arguments in argument_objects:
        for name, bound, strict in _ARGUMENT_BOUNDS:
            value = getattr(arguments, name, None)
            if value is None:
                continue
            if value != value or (value <= bound if strict else value < bound):  # value != value: NaN
                need = f"> {bound}" if strict else f">= {bound}"
                raise TrainingError(f"--{name} {value}: must be {need}")


def start_run(training_args, inputs: dict | None = None, overwrite: bool = False) -> Path:
    """Logging, seed, output folder and device set-up shared by the training scripts; returns the output folder.
    With `inputs` (what the run is built from, `run_folder.built_from`) the folder is claimed for this run: a folder
    of another run is refused unless `overwrite` starts over."""
    configure_console()
    set_seed(training_args.seed)
    output_dir = Path(training_args.output_dir)
    if not torch.cuda.is_available():
        training_args.dataloader_pin_memory = False
    _ = training_args.device  # sets up the process group, so main_process_first really waits
    with training_args.main_process_first(desc="output folder"):
        if inputs is not None and training_args.process_index == 0:
            checkpoint = open_run(output_dir, inputs, training_args.resume_from_checkpoint, overwrite)
        else:
            check_writable(output_dir)
            checkpoint = resolve_resume_checkpoint(output_dir, training_args.resume_from_checkpoint)
    training_args.resume_from_checkpoint = checkpoint  # `true`: the last complete checkpoint's folder
    return output_dir


# ---------------------------------------------------------------------------------------------------------------
# data


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


def early_stopping_callbacks(data_args, training_args) -> list:
    """[EarlyStoppingCallback] on the validation loss when the recipe stops early (`--recipe`; "auto": real data,
    not the synthetic demo), else []. The best checkpoints are still chosen by validation accuracy."""
    from transformers import EarlyStoppingCallback

    recipe = getattr(data_args, "recipe", "auto")
    if recipe == "paper" or (recipe == "auto" and data_args.dataset == "demo"):
        return []
    if training_args.eval_strategy == "no":
        raise TrainingError("early stopping needs an evaluation each epoch: drop --eval_strategy no, or use "
                            "--recipe paper")
    class StopOnValidationLoss(EarlyStoppingCallback):
        """Early stopping alone: the best teacher and student are kept by `BestModelExportCallback` (by validation
        accuracy), not by `load_best_model_at_end`, whose absence the parent class warns about."""

        def on_train_begin(self, args, state, control, **kwargs):
            pass

    training_args.metric_for_best_model, training_args.greater_is_better = "loss", False
    return [StopOnValidationLoss(early_stopping_patience=data_args.early_stopping_patience)]


def _image_size_kwargs(model_args):
    if model_args.image_size is None:
        return {}
    if model_args.vision_encoder != OFFLINE_VISION_ENCODER:
        raise ValueError("--image_size applies to the efficientnet_lite0 backbone; a CLIP checkpoint fixes its own.")
    return {"image_size": model_args.image_size}


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
    if schema.get("step_names") and schema["step_names"] != config.step_names:
        logger.warning("%s: step names taken from the training data (%s)", source, schema["step_names"])
        config.step_names = list(schema["step_names"])
    if isinstance(model, StepCoTTeacher) and schema["step_questions"] != config.step_questions:
        raise ValueError(f"{source} was trained with other step questions than the training data's; its question "
                         "encodings would not match. Train the teacher from the encoders instead.")
    return model


def build_teacher(model_args, schema: dict | None = None):
    """The teacher: a saved one (`--teacher_model`), or built around the encoders with the data's `schema`
    (`dataset_schema`: step names, questions and options)."""
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
    text = local_encoder_path(teacher.config.text_encoder_name_or_path) or offline_text_encoder_path()
    return StepCoTProcessor.from_model_config(teacher.config, AutoTokenizer.from_pretrained(text))


def feature_datasets(splits, models: dict, processor, cache_dir, training_args, share_encoder=False, data_args=None):
    """Cached-feature datasets per split: one encoder pass per image and encoder, reused across runs.

    `models` maps a role ("teacher", and optionally "student") to its model; with `share_encoder` the student reads
    the teacher's features (same frozen encoder). Under a multi-process launch every rank encodes its shard
    (`extraction.extract_image_embeds`) and rank 0 writes the cache."""
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
            def compute(model=model, role=role):
                return extract_image_embeds(model, dataset, processor, training_args.per_device_eval_batch_size,
                                            workers, training_args.device, bf16, f"{role} image features ({name})")

            embeds[role], path, hit = cached_image_embeds(
                model, None, fingerprint, cache_dir, extra=extras, encoder_digest=digests[role],
                num_rows=len(dataset), compute=compute, write=training_args.process_index == 0,
            )
            if training_args.world_size > 1:
                torch.distributed.barrier()  # the cache file is complete before any rank looks for the next one
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
    if data_args.max_train_samples is not None:
        splits["train"] = splits["train"].select(range(min(data_args.max_train_samples, len(splits["train"]))))
    return splits, eval_split


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


# ---------------------------------------------------------------------------------------------------------------
# scoring


def score_and_report(role_logits: dict, labels, split, output_dir, num_bootstrap, config, write=True,
                     extra_runs=()):
    """Metrics with bootstrap CIs for each role's padded logits; reports under OUTPUT_DIR/metrics/ROLE. The table
    also lists `extra_runs` ((name, EvaluationMetrics) pairs: the baselines) under the roles."""
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
    return results, markdown_table(runs + list(extra_runs))


def feature_baselines(datasets_by_split, eval_split, config, num_bootstrap, output_dir, write=True, seed=0):
    """Majority class and linear probe on the cached (frozen) image features the heads trained on, scored like
    the models. Returns ({name: flat metrics}, [(name, EvaluationMetrics)], {name: per-step probabilities})."""

    train, validation, evaluation = (datasets_by_split[s] for s in ("train", "validation", eval_split))
    scores = baseline_scores(train.image_embeds.numpy(), train.labels.numpy(), validation.image_embeds.numpy(),
                             validation.labels.numpy(), evaluation.image_embeds.numpy(), config.num_classes_per_step,
                             seed=seed)
    results, runs, probabilities = {}, [], {}
    for name, (step_scores, info) in scores.items():
        metrics = compute_step_metrics(
            step_scores, evaluation.labels.numpy(), step_names=config.step_names, step_options=config.step_options,
            scores="probabilities", num_bootstrap=num_bootstrap,
            metadata={"model": name, "split": eval_split, "features": "the teacher's frozen image embeddings", **info})
        slug = name.lower().replace(" ", "_")
        if write:
            write_report(metrics, output_dir / "metrics" / slug, model_name=name)
        results[slug], probabilities[name] = metrics.flat(), step_scores
        runs.append((name, metrics))
    return results, runs, probabilities


def paired_differences_text(role_logits: dict, baseline_probabilities, labels, config, num_bootstrap, seed=0) -> str:
    """Lines 'Teacher − Linear probe, Diagnosis: accuracy -2.8 pp [-8.3, +1.4]' for every labelled step."""

    labels = np.asarray(labels)
    lines = []
    for role, logits in role_logits.items():
        role_probabilities = to_step_probabilities(np.asarray(logits), config.num_classes_per_step, scores="logits")
        for step, name in enumerate(config.step_names):
            if not (labels[:, step] != IGNORE_INDEX).any():
                continue
            difference = paired_difference(role_probabilities[step], baseline_probabilities[step], labels[:, step],
                                           num_bootstrap, seed, 0.95)["accuracy"]
            lines.append(f"{role.capitalize()} − linear probe, {name} accuracy: {100 * difference['value']:+.1f} pp "
                         f"[{100 * difference['ci_low']:+.1f}, {100 * difference['ci_high']:+.1f}] (paired "
                         "bootstrap 95%)")
    return "\n".join(lines)


def record_training_facts(models: dict, splits, datasets_by_split=None, share_encoder=False):
    """Store in each model's config what predict needs to know about its training: per step, how many training
    labels it had (`step_training_counts`), and with cached features, the training embeddings' statistics for the
    out-of-distribution check (`embedding_statistics`, threshold from the validation split)."""

    labels = np.asarray(splits["train"]["labels"])
    counts = [int(c) for c in (labels != IGNORE_INDEX).sum(0)]
    for role, model in models.items():
        model.config.step_training_counts = counts
        if datasets_by_split is None:
            continue
        train, validation = datasets_by_split["train"], datasets_by_split["validation"]
        own = role == "student" and not share_encoder and train.student_image_embeds is not None
        train_embeds = train.student_image_embeds if own else train.image_embeds
        validation_embeds = validation.student_image_embeds if own else validation.image_embeds
        model.config.embedding_statistics = embedding_statistics(train_embeds.numpy(), validation_embeds.numpy())
    untrained = [name for name, count in zip(next(iter(models.values())).config.step_names, counts) if not count]
    if untrained:
        logger.warning("no training labels for %s: exported as untrained (shown as unknown by predict)",
                       ", ".join(untrained))


def finish_run(models: dict, processor, output_dir: Path, eval_split: str, results: dict, run_args: dict, table: str):
    """The end of a training script on the main process: export each model (OUTPUT_DIR/ROLE), write
    OUTPUT_DIR/results.json and print the table with where everything is."""
    export(models, processor, output_dir, results, run_args, table)
    summary = {"eval_split": eval_split, "results": results, "run_args": run_args,
               **{role: str(output_dir / role) for role in models}}
    (output_dir / "results.json").write_text(strict_json(summary, indent=2, default=str), encoding="utf-8")
    print("\n" + table)
    folders = " and ".join(str(output_dir / role) for role in models)
    print(f"\nCheckpoints: {folders} (load with AutoModel.from_pretrained(..., trust_remote_code=True))")
    print(f"Metrics ({eval_split} split): {output_dir / 'metrics'}; summary: {output_dir / 'results.json'}")
