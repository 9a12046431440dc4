"""Train the Step-CoT teacher and distil the student jointly (paper App. D.5), then evaluate and export both.

    stepcot train --output_dir outputs/demo                         # offline demo: synthetic data, offline encoders
    accelerate launch trainers/run_distill.py --dataset fl-15o/Step-CoT \
        --vision_encoder openai/clip-vit-base-patch32 --text_encoder bert-base-uncased --output_dir outputs/paper
    torchrun --nproc_per_node 2 trainers/run_distill.py ...          # multi-process on CPU (gloo)

Every `transformers.TrainingArguments` flag works (`--per_device_train_batch_size`, `--bf16`, `--resume_from_checkpoint`,
...). `--num_train_epochs` counts the distillation epochs; `--teacher_pretrain_epochs` teacher-only epochs come first.

Writes to OUTPUT_DIR: `teacher/` and `student/` (from_pretrained folders with processor and model card),
`metrics/{teacher,student}/` (metrics.json, Markdown table, plots for the evaluation split), `results.json`, and the
Trainer's checkpoints.
"""

import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser, TrainingArguments, set_seed

if __package__ in (None, ""):  # run as a file (`accelerate launch trainers/run_distill.py`): find the project
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling_stepcot import StepCoTProcessor, StepCoTStudent, StepCoTTeacher
from trainers.distillation import (
    BestModelExportCallback,
    StepCoTDistillationPair,
    StepCoTDistillationTrainer,
    build_pair_compute_metrics,
)
from trainers.feature_cache import EmbeddingDataset, cached_image_embeds, encoder_fingerprint
from trainers.losses import inverse_frequency_class_weights
from trainers.offline_encoders import OFFLINE_VISION_ENCODER, offline_text_encoder_path

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
    relation_dim: int = field(default=256, metadata={"help": "width of the CH projections"})
    lora_r: int = field(
        default=0, metadata={"help": "rank of LoRA adapters on both image encoders (0: none); merged at export"}
    )
    image_size: int | None = field(
        default=None, metadata={"help": "input size for the efficientnet_lite0 backbone (CLIP fixes its own); default 224"}
    )


@dataclass
class DataArguments:
    dataset: str = field(
        default="demo",
        metadata={"help": "'demo' (render the synthetic set), a release folder (data.json), a built folder, or a Hub id"},
    )
    demo_size: int = field(default=1200, metadata={"help": "records in the synthetic demo"})
    demo_image_size: int = field(default=224)
    eval_split: str = field(default="test", metadata={"help": "split for the final evaluation"})
    feature_cache: bool = field(
        default=True, metadata={"help": "with frozen encoders, encode every image once and train on cached features"}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "feature cache folder (default OUTPUT_DIR/cache)"})
    max_train_samples: int | None = field(default=None)
    num_bootstrap: int = field(default=1000, metadata={"help": "bootstrap resamples for the final confidence intervals"})
    lenient: bool = field(default=False, metadata={"help": "skip (and report) bad records instead of failing"})


@dataclass
class DistillationArguments:
    alpha_kd: float = field(default=0.5)
    alpha_ch: float = field(default=1.0)
    temperature: float = field(default=2.0)
    teacher_learning_rate: float = field(default=5e-5)
    student_learning_rate: float = field(default=1e-4)
    teacher_pretrain_epochs: int = field(default=2)
    class_weights: bool = field(default=False, metadata={"help": "inverse-frequency class weights in the CE terms"})


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


def parse_args(argv=None):
    return parse_run_args((ModelArguments, DataArguments, DistillationArguments, TrainingArguments), argv)


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
    """A `DatasetDict` with `image` and `labels` columns from the demo, a release folder, a built folder or the Hub."""
    from datasets import load_dataset

    from dataset_script.hub import build_hub_dataset

    source = data_args.dataset
    if source == "demo":
        from dataset_script.demo import write_demo_release

        release = output_dir / "demo-release"
        if not (release / "data.json").is_file():
            summary = write_demo_release(release, n=data_args.demo_size, image_size=data_args.demo_image_size)
            logger.info("rendered %d synthetic records in %.1f s", summary["records"], summary["seconds"])
        source = str(release)
    path = Path(source)
    if (path / "data.json").is_file() or (path / "data.jsonl").is_file():  # a release: validate and build
        built = output_dir / "dataset"
        if not (built / "README.md").is_file():
            summary = build_hub_dataset(path, built, strict=not data_args.lenient)
            logger.info("built %s from the release %s", built, path)
            if summary.get("records_skipped"):
                logger.warning("%s records skipped: see %s", summary["records_skipped"], summary["report"])
        source = str(built)
    return load_dataset(source)


def _image_size_kwargs(model_args):
    if model_args.image_size is None:
        return {}
    if model_args.vision_encoder != OFFLINE_VISION_ENCODER:
        raise ValueError("--image_size applies to the efficientnet_lite0 backbone; a CLIP checkpoint fixes its own.")
    return {"image_size": model_args.image_size}


def build_teacher(model_args):
    if model_args.teacher_model:
        return StepCoTTeacher.from_pretrained(model_args.teacher_model)
    text = offline_text_encoder_path() if model_args.text_encoder == OFFLINE_TEXT else model_args.text_encoder
    return StepCoTTeacher.from_pretrained_encoders(
        vision=model_args.vision_encoder, text=text, freeze_encoders=model_args.freeze_encoders,
        hidden_size=model_args.teacher_hidden_size, use_memory=model_args.use_memory, use_text=model_args.use_text,
        **_image_size_kwargs(model_args),
    )


def build_student(model_args):
    if model_args.student_model:
        return StepCoTStudent.from_pretrained(model_args.student_model)
    return StepCoTStudent.from_pretrained_encoders(
        vision=model_args.vision_encoder, freeze_encoders=model_args.freeze_encoders,
        hidden_size=model_args.student_hidden_size, **_image_size_kwargs(model_args),
    )


def build_processor(teacher):
    from transformers import AutoTokenizer

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
    eval_split = data_args.eval_split if data_args.eval_split in splits else "validation"
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
        from modeling_stepcot.processing_stepcot import StepCoTDataCollator

        datasets_by_split, use_cache = pixel_datasets(splits, processor), False
        data_collator = StepCoTDataCollator(processor)
    logger.info("training on %s (%d train / %d validation)", "cached image features" if use_cache else "images",
                len(splits["train"]), len(splits["validation"]))
    return datasets_by_split, data_collator, use_cache


# ---------------------------------------------------------------------------------------------------------------
# export


def export(models: dict, processor, output_dir: Path, results: dict, run_args: dict, table: str):
    """Each model to OUTPUT_DIR/ROLE: weights + code, processor, the pipeline, and a filled-in model card."""
    from trainers.model_card import write_model_card
    from trainers.predict import add_pipeline_to_checkpoint

    for role, model in models.items():
        folder = output_dir / role
        if run_args["model"].get("lora_r"):
            from trainers.lora import merge_vision_lora

            merge_vision_lora(model)  # the export is a plain Step-CoT model: no peft needed to load it
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        add_pipeline_to_checkpoint(folder)  # `pipeline(model=folder, trust_remote_code=True)` without this package
        write_model_card(folder, role, model.config, run_args=run_args, metrics=results.get(role), table=table)


def score_and_report(role_logits: dict, labels, split, output_dir, num_bootstrap, config, write=True):
    """Metrics with bootstrap CIs for each role's padded logits; reports under OUTPUT_DIR/metrics/ROLE."""
    import numpy as np

    from trainers.metrics import compute_step_metrics
    from trainers.report import markdown_table, write_report

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
    from safetensors.torch import load_file

    for role in ("teacher", "student"):
        weights = output_dir / "best" / role / "model.safetensors"
        if weights.is_file():
            getattr(pair, role).load_state_dict(load_file(weights))


# ---------------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    model_args, data_args, distill_args, training_args = parse_args(argv)
    distillation_epochs = training_args.num_train_epochs
    training_args.num_train_epochs = distillation_epochs + distill_args.teacher_pretrain_epochs
    output_dir = start_run(training_args)
    splits, eval_split = prepare_splits(data_args, training_args, output_dir)

    teacher, student = build_teacher(model_args), build_student(model_args)
    processor = build_processor(teacher)
    pair = StepCoTDistillationPair.from_models(teacher, student, relation_dim=model_args.relation_dim)
    if model_args.lora_r:
        from trainers.lora import add_vision_lora

        for role in ("teacher", "student"):
            count = add_vision_lora(getattr(pair, role), model_args.lora_r)
            logger.info("LoRA rank %d on the %s's image encoder: %d trainable weights", model_args.lora_r, role, count)
    datasets_by_split, data_collator, use_cache = training_datasets(
        splits, {"teacher": pair.teacher, "student": pair.student}, processor, data_args, training_args, output_dir,
        share_encoder=pair.shares_image_encoder(),
    )

    class_weights = None
    if distill_args.class_weights:
        labels = torch.as_tensor(splits["train"]["labels"], dtype=torch.long)
        class_weights = inverse_frequency_class_weights(labels, teacher.config.num_classes_per_step)

    trainer = StepCoTDistillationTrainer(
        model=pair,
        args=training_args,
        train_dataset=datasets_by_split["train"],
        eval_dataset=datasets_by_split["validation"],
        data_collator=data_collator,
        compute_metrics=build_pair_compute_metrics(teacher.config.num_classes_per_step),
        callbacks=[BestModelExportCallback(str(output_dir))],
        temperature=distill_args.temperature,
        alpha_kd=distill_args.alpha_kd,
        alpha_ch=distill_args.alpha_ch,
        teacher_learning_rate=distill_args.teacher_learning_rate,
        student_learning_rate=distill_args.student_learning_rate,
        teacher_pretrain_epochs=distill_args.teacher_pretrain_epochs,
        class_weights=class_weights,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)

    load_best(pair, output_dir)
    prediction = trainer.predict(datasets_by_split[eval_split], metric_key_prefix=eval_split)
    teacher_logits, student_logits = prediction.predictions[:2]
    results, table = score_and_report({"teacher": teacher_logits, "student": student_logits}, prediction.label_ids,
                                      eval_split, output_dir, data_args.num_bootstrap, teacher.config,
                                      write=trainer.is_world_process_zero())
    run_args = {
        "model": asdict(model_args), "data": asdict(data_args), "distillation": asdict(distill_args),
        "training": {k: getattr(training_args, k) for k in (
            "per_device_train_batch_size", "num_train_epochs", "seed", "max_grad_norm", "lr_scheduler_type")},
        "distillation_epochs": distillation_epochs, "eval_split": eval_split,
        "feature_cache": use_cache,
    }
    if trainer.is_world_process_zero():
        export({"teacher": pair.teacher, "student": pair.student}, processor, output_dir, results, run_args, table)
        summary = {"eval_split": eval_split, "results": results, "run_args": run_args,
                   "teacher": str(output_dir / "teacher"), "student": str(output_dir / "student")}
        (output_dir / "results.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
        print_summary(output_dir, eval_split, table, ("teacher", "student"))
    # every rank reports what it computed (multi-process runs must agree)
    print(f"[rank {training_args.process_index} of {training_args.world_size}] {eval_split} mean accuracy: "
          f"teacher {results['teacher']['mean_accuracy']:.6f} student {results['student']['mean_accuracy']:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
