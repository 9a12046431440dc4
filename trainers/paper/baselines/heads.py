"""Baselines, part 2: the MLP head over [image ; question] embeddings, its training (selected by validation
accuracy), and saving / loading a trained baseline."""

from __future__ import annotations

import contextlib
import copy
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dataset_script.user_files import read_json_file
from modeling_stepcot.configuration_stepcot import IGNORE_INDEX
from modeling_stepcot.modeling_stepcot import PADDED_LOGIT
from trainers.choices import BASELINE_SETTINGS, BASELINE_TRAINING_DEFAULTS
from trainers.paper.baselines.backbones import SplitEmbeddings, backbone_display_name, load_backbone

SETTINGS = BASELINE_SETTINGS
SETTING_LABELS = {"with": "with Step-CoT", "without": "without Step-CoT", "probe": "linear probe (image only)",
                  "majority": "majority class"}
FEATURE_BASELINES = {"probe": "Linear probe", "majority": "Majority"}  # fitted on the image embeddings alone
BASELINE_FILENAME = "baseline.json"
HEAD_FILENAME = "head.safetensors"


# ---------------------------------------------------------------------------------------------------------------
# The MLP


class StepBaselineHead(nn.Module):
    """Linear(Di + Dt -> hidden), ReLU, Linear(hidden -> C_max), shared by every trained step; the logits of
    classes a step does not have are replaced by -1e4 (`class_mask[s, c]` is True for step s's real classes)."""

    def __init__(self, image_dim: int, text_dim: int, num_classes_per_step: list[int], hidden_size: int = 768):
        super().__init__()
        width = max(num_classes_per_step)
        self.mlp = nn.Sequential(
            nn.Linear(image_dim + text_dim, hidden_size), nn.ReLU(), nn.Linear(hidden_size, width)
        )
        mask = torch.zeros(len(num_classes_per_step), width, dtype=torch.bool)
        for step, count in enumerate(num_classes_per_step):
            mask[step, :count] = True
        self.register_buffer("class_mask", mask)

    def forward(self, image_embeds, text_embeds, steps):
        """image_embeds (P, Di), text_embeds (P, Dt), steps (P,) index into the trained steps -> (P, C_max)."""
        logits = self.mlp(torch.cat([image_embeds, text_embeds], dim=-1))
        return logits.masked_fill(~self.class_mask[steps], PADDED_LOGIT)


@dataclass
class BaselineTrainingConfig:
    epochs: int = BASELINE_TRAINING_DEFAULTS["epochs"]
    batch_size: int = BASELINE_TRAINING_DEFAULTS["batch_size"]  # images per batch; each brings one (image, question)
    # pair per labelled trained step
    learning_rate: float = BASELINE_TRAINING_DEFAULTS["learning_rate"]
    weight_decay: float = BASELINE_TRAINING_DEFAULTS["weight_decay"]
    max_grad_norm: float = BASELINE_TRAINING_DEFAULTS["max_grad_norm"]
    hidden_size: int = BASELINE_TRAINING_DEFAULTS["hidden_size"]
    seed: int = 0


def _pairs(embeddings: SplitEmbeddings, rows: torch.Tensor, steps: list[int]):
    """The labelled (image, step) pairs of `rows`: image rows, text rows, position in `steps`, labels."""
    labels = embeddings.labels[rows][:, steps]  # (b, T)
    row_in_batch, position = torch.nonzero(labels != IGNORE_INDEX, as_tuple=True)
    image_rows = rows[row_in_batch]
    text_rows = embeddings.question_index[image_rows, torch.as_tensor(steps)[position]]
    return image_rows, text_rows, position, labels[row_in_batch, position]


def step_logits(head: StepBaselineHead, embeddings: SplitEmbeddings, steps: list[int], num_classes: list[int],
                device: str = "cpu", batch_size: int = 512) -> list[np.ndarray]:
    """Logits of every example at every trained step (labelled or not): one (N, C_s) array per trained step."""
    head.eval()
    outputs = [[] for _ in steps]
    with torch.no_grad():
        for start in range(0, len(embeddings), batch_size):
            rows = torch.arange(start, min(start + batch_size, len(embeddings)))
            images = embeddings.image_embeds[rows].to(device)
            for position, step in enumerate(steps):
                texts = embeddings.text_embeds[embeddings.question_index[rows, step]].to(device)
                logits = head(images, texts, torch.full((len(rows),), position, device=device))
                outputs[position].append(logits[:, : num_classes[position]].cpu().numpy())
    return [np.concatenate(chunks) for chunks in outputs]


def _mean_accuracy(logits: list[np.ndarray], labels: np.ndarray) -> float:
    accuracies = []
    for position, step_scores in enumerate(logits):
        valid = labels[:, position] != IGNORE_INDEX
        if valid.any():
            accuracies.append(float(np.mean(step_scores[valid].argmax(1) == labels[valid, position])))
    return float(np.mean(accuracies)) if accuracies else math.nan


@contextlib.contextmanager
def _one_cpu_thread(device: str):
    """The MLP's matrices are small: intra-op threads gain little and, on a busy machine, make each step ~10x
    slower (measured: 10 ms vs 140 ms per batch on 2 shared cores). CPU training uses one thread."""
    if not str(device).startswith("cpu"):
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_head(train: SplitEmbeddings, validation: SplitEmbeddings | None, steps: list[int], num_classes: list[int],
               config: BaselineTrainingConfig, device: str = "cpu", log=None):
    """Train the MLP on the labelled (image, step) pairs of `steps`; mean cross-entropy over the pairs of a batch.
    Returns the head with the best validation mean accuracy (the last epoch's without a validation split) and the
    per-epoch history."""
    with _one_cpu_thread(device):
        return _train_head(train, validation, steps, num_classes, config, device, log)


def _train_head(train, validation, steps, num_classes, config, device, log):
    from transformers import get_cosine_schedule_with_warmup

    torch.manual_seed(config.seed)
    head = StepBaselineHead(train.image_embeds.shape[1], train.text_embeds.shape[1], num_classes,
                            config.hidden_size).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    batches_per_epoch = math.ceil(len(train) / config.batch_size)
    scheduler = get_cosine_schedule_with_warmup(optimizer, 0, max(1, config.epochs * batches_per_epoch))
    generator = torch.Generator().manual_seed(config.seed)
    history, best_state, best_score = [], None, -math.inf
    for epoch in range(1, config.epochs + 1):
        head.train()
        order = torch.randperm(len(train), generator=generator)
        total_loss, total_pairs = 0.0, 0
        for start in range(0, len(train), config.batch_size):
            image_rows, text_rows, position, labels = _pairs(train, order[start:start + config.batch_size], steps)
            if labels.numel():  # a batch without any label still advances the schedule
                logits = head(train.image_embeds[image_rows].to(device), train.text_embeds[text_rows].to(device),
                              position.to(device))
                loss = nn.functional.cross_entropy(logits, labels.to(device))
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(head.parameters(), config.max_grad_norm)
                optimizer.step()
                total_loss += loss.item() * labels.numel()
                total_pairs += labels.numel()
            scheduler.step()
        entry = {"epoch": epoch, "train_loss": total_loss / max(total_pairs, 1)}
        if validation is not None and len(validation):
            entry["validation_mean_accuracy"] = _mean_accuracy(
                step_logits(head, validation, steps, num_classes, device), validation.labels[:, steps].numpy())
        score = entry.get("validation_mean_accuracy", epoch)  # no validation: keep the last epoch
        if not math.isnan(score) and score > best_score:
            best_score, best_state = score, copy.deepcopy(head.state_dict())
            entry["best"] = True
        history.append(entry)
        if log:
            log(entry)
    if best_state is not None:
        head.load_state_dict(best_state)
    return head.eval(), history


# ---------------------------------------------------------------------------------------------------------------
# A trained baseline: saving, loading, predicting from images


@dataclass
class BaselineSpec:
    """What `baseline.json` holds: enough to rebuild the MLP and its inputs from images."""

    backbone: str
    setting: str  # "with" or "without"
    steps: list[int]  # trained step indices (into the seven-step schema)
    step_names: list[str]
    step_options: list[list[str]]
    step_questions: list[str]  # the "Question: ..." text of each trained step used at prediction time
    image_dim: int
    text_dim: int
    training: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    format: str = "stepcot-baseline/1"


def save_baseline(folder: Path, head: StepBaselineHead, spec: BaselineSpec) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, folder / HEAD_FILENAME)
    (folder / BASELINE_FILENAME).write_text(json.dumps(asdict(spec), indent=2) + "\n", encoding="utf-8")


class BaselineModel:
    """A trained baseline (frozen backbone + MLP) that answers its trained steps for raw images."""

    def __init__(self, spec: BaselineSpec, head: StepBaselineHead, backbone):
        self.spec, self.head, self.backbone = spec, head, backbone

    @property
    def display_name(self) -> str:
        return f"{backbone_display_name(self.spec.backbone)} ({SETTING_LABELS[self.spec.setting]})"

    def step_logits(self, images, step: int) -> np.ndarray:
        """(B, C) logits of schema step `step` (it must be one the baseline was trained on)."""
        if step not in self.spec.steps:
            raise ValueError(f"this baseline was trained on steps {self.spec.steps}, not step {step}.")
        position = self.spec.steps.index(step)
        image_embeds = self.backbone.embed_images(images).to(next(self.head.parameters()).device)
        text = self.backbone.embed_texts([self.spec.step_questions[position]]).to(image_embeds.device)
        with torch.no_grad():
            logits = self.head(image_embeds, text.expand(len(image_embeds), -1),
                               torch.full((len(image_embeds),), position, device=image_embeds.device))
        return logits[:, : len(self.spec.step_options[position])].cpu().numpy()


def is_baseline_folder(folder) -> bool:
    return (Path(folder) / BASELINE_FILENAME).is_file()


def load_baseline(folder, device: str = "cpu", backbone=None, trust_remote_code: bool = False) -> BaselineModel:
    """Rebuild a baseline saved by `stepcot baseline` (loads its backbone unless one is given)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not is_baseline_folder(folder):
        raise FileNotFoundError(f"no {BASELINE_FILENAME} in {folder}: not a `stepcot baseline` output folder.")
    try:
        spec = BaselineSpec(**read_json_file(folder / BASELINE_FILENAME))
        num_classes = [len(options) for options in spec.step_options]
        head = StepBaselineHead(spec.image_dim, spec.text_dim, num_classes, int(spec.training.get("hidden_size", 768)))
    except (ValueError, TypeError, AttributeError) as error:
        raise ValueError(f"{folder / BASELINE_FILENAME} is not a valid baseline description ({error})") from None
    try:
        head.load_state_dict(load_file(folder / HEAD_FILENAME))  # strict: a missing or extra step head is an error
    except (RuntimeError, OSError) as error:
        problem = " ".join(str(error).split())[:300]
        raise ValueError(f"{folder / HEAD_FILENAME} does not match {BASELINE_FILENAME}: {problem}") from None
    return BaselineModel(spec, head.to(device).eval(),
                         backbone or load_backbone(spec.backbone, device, trust_remote_code=trust_remote_code))
