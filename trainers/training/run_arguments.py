"""Arguments of the training scripts (`run_distill.py`, `run_teacher.py`): the model and data dataclasses, the
short `--help`, the checks on values, the recipe's early stopping, and the start of a run (logging, seed, output
folder)."""

import argparse
import copy
import logging
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser, set_seed

from trainers.console import configure_console, pop_verbose_flag
from trainers.training.checkpoints import TrainingError, resolve_resume_checkpoint
from trainers.training.offline_encoders import OFFLINE_VISION_ENCODER
from trainers.training.run_folder import check_writable, open_run

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
    standardize_image_embeds: bool = field(
        default=False,
        metadata={"help": "standardise the frozen image embedding per dimension with the training images' mean and "
                          "scale before the heads (the linear probe's preprocessing; stored in the model). Needs "
                          "frozen image encoders. Off by default: on Kermany-480 it helps three classes and hurts two "
                          "on validation (benchmarks/RESULTS.md)"},
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


def standardizes_image_embeds(model_args) -> bool:
    """`--standardize_image_embeds`, checked: the statistics are fitted once, so the image encoders stay frozen."""
    if model_args.standardize_image_embeds and (not model_args.freeze_encoders or model_args.lora_r):
        raise TrainingError("--standardize_image_embeds needs frozen image encoders (no --lora_r, "
                            "--freeze_encoders true): the statistics are fitted once, before training")
    return bool(model_args.standardize_image_embeds)


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
