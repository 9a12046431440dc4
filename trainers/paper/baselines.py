"""`stepcot baseline`: vision-foundation-model baselines of the paper's Table 3 / Table 8 (protocol of App. C.1).

    stepcot baseline --backbone openai/clip-vit-base-patch32 Salesforce/blip-itm-base-coco \
        --dataset step_cot_hub --out reports/baselines

Protocol. A frozen vision-language backbone (any Hub id or folder that `AutoModel` loads and that has
`get_image_features` / `get_text_features`: CLIP, SigLIP, ALIGN, BLIP, FLAVA, ...; open_clip models such as
BiomedCLIP as `hf-hub:ORG/NAME`) gives a pooled image embedding per radiograph and a pooled text embedding per
step question, asked as "Question: [text]". The two are concatenated and fed to a 2-layer MLP (hidden 768, ReLU).
AdamW, cosine schedule without warm-up, gradient clipping 1.0, batch 8 images, 50 epochs (the paper's learning
rate and weight decay did not survive extraction: defaults here are 1e-4 and 0.01).

- "with Step-CoT": ONE shared MLP is trained on all seven steps. Each (image, step) pair is one input
  [image ; question-of-that-step]; the output layer is 9-way (the widest step, the paper's uniform A-I -> 0-8
  mapping) and is masked to the step's own classes (the other logits are set to -1e4, so they get zero
  probability and zero gradient). The question embedding tells the MLP which step it answers.
- "without Step-CoT": the same MLP trained on the final diagnosis step only.
Both are selected by validation accuracy (mean over the trained steps, checked after every epoch) and evaluated on
the test split with `trainers.evaluation.metrics` (bootstrap CIs); `table3.md` sets the diagnosis rows side by side
with the paired-bootstrap difference (with - without), the "(+x)" of the paper's Table 3.

Embeddings are computed once per dataset split and backbone and cached (safetensors, keyed by the dataset
fingerprint, the backbone's weights and its preprocessing); only the small MLP trains.

Writes OUT/<backbone>/{with_stepcot,without_stepcot}/ (metrics.json, metrics.md, plots, predictions.npz, the MLP
as head.safetensors + baseline.json, loadable with `load_baseline` and usable by `stepcot eval-transfer`), and
OUT/table3.md, OUT/table3.csv, OUT/table8.md.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import io
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from modeling_stepcot.configuration_stepcot import DEFAULT_STEP_QUESTIONS, IGNORE_INDEX, StepCoTSchemaConfig
from modeling_stepcot.modeling_stepcot import PADDED_LOGIT
from modeling_stepcot.processing_stepcot import image_to_rgb
from trainers.evaluation.bootstrap import percentile_interval, resample_weights
from trainers.evaluation.metrics import (
    METRIC_DISPLAY_NAMES,
    METRIC_NAMES,
    compute_step_metrics,
    weighted_step_metrics,
)
from trainers.evaluation.report import format_estimate, write_report
from trainers.training.feature_cache import module_fingerprint

QUESTION_PREFIX = "Question: "
SETTINGS = {"with": "with_stepcot", "without": "without_stepcot"}
SETTING_LABELS = {"with": "with Step-CoT", "without": "without Step-CoT"}
BASELINE_FILENAME = "baseline.json"
HEAD_FILENAME = "head.safetensors"
PREDICTIONS_FILENAME = "predictions.npz"
# The paper tokenizes questions to 128 tokens; CLIP-style text towers accept fewer (77), so the smaller wins.
QUESTION_MAX_LENGTH = 128
OPEN_CLIP_PREFIX = "hf-hub:"
OPEN_CLIP_INSTALL = "pip install open_clip_torch"


# ---------------------------------------------------------------------------------------------------------------
# Frozen backbones: pooled image and text embeddings


def _pooled(output) -> torch.Tensor:
    """A (B, D) embedding from what `get_image_features` / `get_text_features` return: a tensor (transformers 4),
    or a model output whose `pooler_output` holds the projected embedding (transformers 5). FLAVA projects every
    token; its pooled embedding is the first (CLS) token, as in FlavaModel.forward."""
    if not isinstance(output, torch.Tensor):
        pooled = getattr(output, "pooler_output", None)
        if pooled is None:
            raise ValueError(f"the backbone's feature method returned {type(output).__name__} without pooler_output")
        output = pooled
    return output[:, 0] if output.dim() == 3 else output


def is_open_clip_name(name_or_path: str) -> bool:
    """open_clip names its Hub models `hf-hub:ORG/NAME`; a local open_clip export has open_clip_config.json."""
    return name_or_path.startswith(OPEN_CLIP_PREFIX) or (Path(name_or_path) / "open_clip_config.json").is_file()


class _Backbone:
    """What every backbone shares: a weight fingerprint for the embedding cache, computed once."""

    def fingerprint(self) -> str:
        if getattr(self, "_fingerprint", None) is None:  # hashing every weight takes ~1 s for ViT-B: once per run
            self._fingerprint = module_fingerprint(self.model, self.name)
        return self._fingerprint

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


class TransformersBackbone(_Backbone):
    """A transformers vision-language model with `get_image_features` and `get_text_features`."""

    kind = "transformers"

    def __init__(self, name_or_path: str, device: str = "cpu"):
        from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer

        try:
            config = AutoConfig.from_pretrained(name_or_path)
        except (OSError, ValueError) as error:
            hint = ""
            if "biomedclip" in name_or_path.lower():
                hint = (f" BiomedCLIP is an open_clip model: pass --backbone {OPEN_CLIP_PREFIX}"
                        f"{name_or_path.split(OPEN_CLIP_PREFIX)[-1]} (needs `{OPEN_CLIP_INSTALL}`).")
            raise ValueError(f"cannot load the backbone config of {name_or_path!r}: {error}{hint}") from error
        self.name = name_or_path
        self.model = AutoModel.from_pretrained(name_or_path).to(device).eval().requires_grad_(False)
        missing = [m for m in ("get_image_features", "get_text_features") if not hasattr(self.model, m)]
        if missing:
            raise ValueError(
                f"{name_or_path} loads as {type(self.model).__name__} ({config.model_type}), which has no "
                f"{' / '.join(missing)}: the baseline needs a dual-encoder vision-language model (CLIP, SigLIP, "
                "ALIGN, BLIP, FLAVA, ...). VisualBERT-style models need region features from a detector and are "
                "not supported."
            )
        self.image_processor = AutoImageProcessor.from_pretrained(name_or_path)
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        self.device = device
        text_config = getattr(config, "text_config", None)
        limits = [QUESTION_MAX_LENGTH, getattr(self.tokenizer, "model_max_length", QUESTION_MAX_LENGTH),
                  getattr(text_config, "max_position_embeddings", QUESTION_MAX_LENGTH)]
        self.max_length = int(min(limit for limit in limits if limit))

    @property
    def image_size(self) -> int | None:
        size = getattr(self.image_processor, "size", None) or {}
        return size.get("height") or size.get("shortest_edge")

    def preprocessing(self) -> dict:
        return {"image_processor": self.image_processor.to_dict(), "max_length": self.max_length}

    @torch.no_grad()
    def embed_images(self, images) -> torch.Tensor:
        rgb = [image_to_rgb(image, self.image_size) for image in images]
        pixel_values = self.image_processor(images=rgb, return_tensors="pt")["pixel_values"].to(self.device)
        return _pooled(self.model.get_image_features(pixel_values=pixel_values)).float().cpu()

    @torch.no_grad()
    def embed_texts(self, texts) -> torch.Tensor:
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        return _pooled(self.model.get_text_features(**inputs)).float().cpu()


class OpenClipBackbone(_Backbone):
    """An open_clip model (e.g. hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224)."""

    kind = "open_clip"

    def __init__(self, name_or_path: str, device: str = "cpu"):
        try:
            import open_clip
        except ModuleNotFoundError as error:
            raise ModuleNotFoundError(
                f"{name_or_path} is an open_clip model (BiomedCLIP and similar cannot be loaded by transformers): "
                f"install open_clip with `{OPEN_CLIP_INSTALL}` and run again."
            ) from error
        self.name = name_or_path
        self.model, self.preprocess = open_clip.create_model_from_pretrained(name_or_path)
        self.model = self.model.to(device).eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(name_or_path)
        self.device = device

    def preprocessing(self) -> dict:
        return {"open_clip_preprocess": repr(self.preprocess)}

    @torch.no_grad()
    def embed_images(self, images) -> torch.Tensor:
        pixel_values = torch.stack([self.preprocess(image_to_rgb(image)) for image in images]).to(self.device)
        return self.model.encode_image(pixel_values).float().cpu()

    @torch.no_grad()
    def embed_texts(self, texts) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(list(texts)).to(self.device)).float().cpu()


def load_backbone(name_or_path: str, device: str = "cpu"):
    """The frozen backbone behind a baseline: open_clip for `hf-hub:` names, transformers otherwise."""
    if is_open_clip_name(name_or_path):
        return OpenClipBackbone(name_or_path, device)
    return TransformersBackbone(name_or_path, device)


# ---------------------------------------------------------------------------------------------------------------
# Embedding one dataset split (cached)


@dataclass
class SplitEmbeddings:
    """A split as the MLP sees it: `image_embeds` (N, Di); `text_embeds` (Q, Dt), one row per distinct question
    text; `question_index` (N, S) the row of each (image, step) question; `labels` (N, S), -100 = missing."""

    image_embeds: torch.Tensor
    text_embeds: torch.Tensor
    question_index: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]


def step_question_texts(data, num_steps: int) -> list[list[str]]:
    """Per record, the question of each step as "Question: [text]" (from its vqa_chain; the schema's default
    question where a record has none)."""
    chains = data.select_columns(["vqa_chain"])["vqa_chain"] if "vqa_chain" in data.column_names else None
    texts = []
    for index in range(len(data)):
        chain = chains[index] if chains is not None else []
        row = []
        for step in range(num_steps):
            question = (chain[step].get("question") or "").strip() if step < len(chain) else ""
            row.append(QUESTION_PREFIX + (question or DEFAULT_STEP_QUESTIONS[step]))
        texts.append(row)
    return texts


def _cache_path(cache_dir: Path, data, split: str, backbone) -> Path:
    payload = json.dumps({
        "data": getattr(data, "_fingerprint", None), "split": split, "rows": len(data), "backbone": backbone.name,
        "weights": backbone.fingerprint(), "preprocessing": backbone.preprocessing(), "prefix": QUESTION_PREFIX,
    }, sort_keys=True, default=str)
    return cache_dir / f"baseline_embeds-{hashlib.sha256(payload.encode()).hexdigest()[:24]}.safetensors"


def embed_split(data, backbone, split: str, num_steps: int, cache_dir: Path | None = None,
                batch_size: int = 32) -> tuple[SplitEmbeddings, Path | None, bool]:
    """Embeddings of a `datasets` split (image + labels + vqa_chain columns), from the cache when present.
    Returns (embeddings, cache file or None, whether it was read from the cache)."""
    from safetensors.torch import load_file, save_file

    labels = torch.as_tensor(np.asarray(data["labels"], dtype=np.int64))
    path = _cache_path(Path(cache_dir), data, split, backbone) if cache_dir is not None else None
    if path is not None and path.is_file():
        stored = load_file(path)
        embeddings = SplitEmbeddings(stored["image_embeds"], stored["text_embeds"], stored["question_index"], labels)
        return embeddings, path, True
    texts = step_question_texts(data, num_steps)
    distinct = sorted({text for row in texts for text in row})
    row_of = {text: index for index, text in enumerate(distinct)}
    question_index = torch.tensor([[row_of[text] for text in row] for row in texts], dtype=torch.long)
    text_embeds = torch.cat([backbone.embed_texts(distinct[i:i + batch_size])
                             for i in range(0, len(distinct), batch_size)])
    image_chunks = []
    for start in range(0, len(data), batch_size):
        image_chunks.append(backbone.embed_images(list(data[start:start + batch_size]["image"])))
    image_embeds = torch.cat(image_chunks)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"image_embeds": image_embeds.contiguous(), "text_embeds": text_embeds.contiguous(),
                   "question_index": question_index.contiguous()}, path,
                  metadata={"backbone": backbone.name, "split": split})
    return SplitEmbeddings(image_embeds, text_embeds, question_index, labels), path, False


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
    epochs: int = 50
    batch_size: int = 8  # images per batch; each brings one (image, question) pair per labelled trained step
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    hidden_size: int = 768
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


def load_baseline(folder, device: str = "cpu", backbone=None) -> BaselineModel:
    """Rebuild a baseline saved by `stepcot baseline` (loads its backbone unless one is given)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not is_baseline_folder(folder):
        raise FileNotFoundError(f"no {BASELINE_FILENAME} in {folder}: not a `stepcot baseline` output folder.")
    data = json.loads((folder / BASELINE_FILENAME).read_text(encoding="utf-8"))
    spec = BaselineSpec(**data)
    num_classes = [len(options) for options in spec.step_options]
    head = StepBaselineHead(spec.image_dim, spec.text_dim, num_classes, int(spec.training.get("hidden_size", 768)))
    head.load_state_dict(load_file(folder / HEAD_FILENAME))
    return BaselineModel(spec, head.to(device).eval(), backbone or load_backbone(spec.backbone, device))


# ---------------------------------------------------------------------------------------------------------------
# Paired comparison (with - without) on the diagnosis step


def paired_difference(probabilities_a: np.ndarray, probabilities_b: np.ndarray, labels: np.ndarray,
                      num_bootstrap: int, seed: int | None, confidence_level: float) -> dict[str, dict]:
    """Metric of A minus metric of B on the same labelled examples, with a paired percentile-bootstrap CI (each
    resample draws examples once and scores both models on them)."""
    valid = labels != IGNORE_INDEX
    probabilities_a, probabilities_b, labels = probabilities_a[valid], probabilities_b[valid], labels[valid]
    point = np.ones((1, labels.size))
    value_a = weighted_step_metrics(probabilities_a, labels, point)
    value_b = weighted_step_metrics(probabilities_b, labels, point)
    differences = {name: [] for name in METRIC_NAMES}
    for weights in resample_weights(labels.size, num_bootstrap, seed):
        resampled_a = weighted_step_metrics(probabilities_a, labels, weights.astype(float))
        resampled_b = weighted_step_metrics(probabilities_b, labels, weights.astype(float))
        for name in METRIC_NAMES:
            differences[name].append(resampled_a[name] - resampled_b[name])
    result = {}
    for name in METRIC_NAMES:
        values = np.concatenate(differences[name]) if differences[name] else np.empty(0)
        low, high, valid_resamples = percentile_interval(values, confidence_level)
        result[name] = {"value": float(value_a[name][0] - value_b[name][0]), "ci_low": low,
                        "ci_high": high, "valid_resamples": valid_resamples}
    return result


def _signed(value: float, low: float, high: float) -> str:
    if math.isnan(value):
        return "—"
    text = f"{100 * value:+.1f}"
    return text if math.isnan(low) else f"{text} [{100 * low:+.1f}, {100 * high:+.1f}]"


TABLE3_METRICS = ("accuracy", "auc", "sensitivity", "specificity", "f1", "precision")


def table3_markdown(rows: list[dict], confidence_level: float, num_bootstrap: int, seed) -> str:
    """Diagnosis-level summary (paper Table 3): one line per backbone and setting; the "Δ" line under a backbone
    is with - without on the same test examples with its paired bootstrap CI. Table 3's Teacher / Student rows are
    not made here: they are the Diagnosis row of Table 9 (`stepcot eval` / `stepcot train` metrics.md)."""
    header = ["Model", "Setting"] + [METRIC_DISPLAY_NAMES[name] for name in TABLE3_METRICS] + ["n"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if row["kind"] == "metrics":
            diagnosis = row["result"].steps[-1]
            cells = [row["model"], row["setting"]]
            cells += [format_estimate(diagnosis.metrics[name]) for name in TABLE3_METRICS] + [str(diagnosis.count)]
        else:
            diff = row["difference"]
            cells = ["", "Δ with − without"]
            cells += [_signed(diff[n]["value"], diff[n]["ci_low"], diff[n]["ci_high"]) for n in TABLE3_METRICS] + [""]
        lines.append("| " + " | ".join(cells) + " |")
    level = f"{100 * confidence_level:g}%"
    lines += [
        "",
        f"Diagnosis step of the evaluation split, values in %; brackets: {level} percentile bootstrap CI over "
        f"examples ({num_bootstrap} resamples, seed {seed}). Δ: percentage points, paired bootstrap (each resample "
        "scores both settings on the same examples).",
        "Metrics are macro averages over the diagnosis classes present in the labels (definitions in each "
        "metrics.json). 'with Step-CoT': one MLP trained on all seven steps; 'without': on the diagnosis only.",
    ]
    return "\n".join(lines) + "\n"


def table3_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["model", "setting", "n"]
    for name in TABLE3_METRICS:
        header += [name, f"{name}_ci_low", f"{name}_ci_high"]
    writer.writerow(header)
    for row in rows:
        if row["kind"] == "metrics":
            diagnosis = row["result"].steps[-1]
            values = [(diagnosis.metrics[n].value, diagnosis.metrics[n].ci_low, diagnosis.metrics[n].ci_high)
                      for n in TABLE3_METRICS]
            line = [row["model"], row["setting"], diagnosis.count]
        else:
            values = [(row["difference"][n]["value"], row["difference"][n]["ci_low"], row["difference"][n]["ci_high"])
                      for n in TABLE3_METRICS]
            line = [row["model"], "difference with - without", ""]
        for triple in values:
            line += ["" if math.isnan(v) else repr(float(v)) for v in triple]
        writer.writerow(line)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# The command


def backbone_display_name(name_or_path: str) -> str:
    return name_or_path.rstrip("/").split("/")[-1].removeprefix(OPEN_CLIP_PREFIX)


def backbone_slug(name_or_path: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name_or_path.removeprefix(OPEN_CLIP_PREFIX).strip("/")).strip("_")


def run_baseline(backbone_name: str, dataset: str, out: Path, settings=("with", "without"),
                 training: BaselineTrainingConfig | None = None, splits=("train", "validation", "test"),
                 cache_dir: Path | None = None, device: str | None = None, num_bootstrap: int = 1000,
                 confidence_level: float = 0.95, seed: int = 0, max_examples: int | None = None,
                 embed_batch_size: int = 32, plots: bool = True, log=print) -> dict:
    """Train and evaluate one backbone in the requested settings; returns {setting: (EvaluationMetrics, logits,
    labels)} and writes each setting's report under OUT/<backbone slug>/."""
    from trainers.evaluation.evaluate_model import dataset_step_options, load_split

    training = training or BaselineTrainingConfig()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    schema = StepCoTSchemaConfig()
    train_split, validation_split, eval_split = splits
    backbone = load_backbone(backbone_name, device)
    embeddings, datasets = {}, {}
    for split in dict.fromkeys(splits):
        data, resolved = load_split(dataset, split, max_examples)
        datasets[split] = data
        started = time.perf_counter()
        embeddings[split], path, hit = embed_split(data, backbone, resolved, schema.num_steps,
                                                   cache_dir=cache_dir, batch_size=embed_batch_size)
        log(f"{backbone_name} {resolved}: {len(data)} images, embeddings {'read from' if hit else 'written to'} "
            f"{path or '(no cache)'} ({time.perf_counter() - started:.1f} s)")
    step_options, notes = dataset_step_options(datasets[eval_split], schema)
    last = schema.num_steps - 1
    results = {}
    for setting in settings:
        steps = list(range(schema.num_steps)) if setting == "with" else [last]
        num_classes = [len(step_options[s]) for s in steps]
        started = time.perf_counter()
        head, history = train_head(embeddings[train_split], embeddings[validation_split], steps, num_classes,
                                   training, device)
        best = next((e for e in reversed(history) if e.get("best")), history[-1] if history else {})
        log(f"{backbone_name} {SETTING_LABELS[setting]}: trained {training.epochs} epochs in "
            f"{time.perf_counter() - started:.1f} s; kept epoch {best.get('epoch')} "
            f"(validation mean accuracy {best.get('validation_mean_accuracy', math.nan):.3f})")
        evaluation = embeddings[eval_split]
        logits = step_logits(head, evaluation, steps, num_classes, device)
        labels = evaluation.labels[:, steps].numpy()
        name = f"{backbone_display_name(backbone_name)} ({SETTING_LABELS[setting]})"
        result = compute_step_metrics(
            logits, labels, step_names=[schema.step_names[s] for s in steps],
            step_options=[step_options[s] for s in steps], scores="logits", num_bootstrap=num_bootstrap,
            confidence_level=confidence_level, seed=seed,
            metadata={"model": name, "backbone": backbone_name, "setting": SETTING_LABELS[setting],
                      "trained_steps": [s + 1 for s in steps], "dataset": str(dataset),
                      "split": eval_split, "max_examples": max_examples, "training": asdict(training),
                      "selected_epoch": best.get("epoch"), "notes": notes},
        )
        folder = Path(out) / backbone_slug(backbone_name) / SETTINGS[setting]
        write_report(result, folder, model_name=name, plots=plots)
        np.savez_compressed(folder / PREDICTIONS_FILENAME, labels=labels, trained_steps=np.asarray(steps) + 1,
                            **{f"step{s + 1}_logits": scores for s, scores in zip(steps, logits)})
        # The questions the MLP saw (the dataset's own wording), asked again when predicting from images.
        first_record = step_question_texts(datasets[eval_split].select(range(min(1, len(datasets[eval_split])))),
                                           schema.num_steps)
        asked = first_record[0] if first_record else [QUESTION_PREFIX + q for q in DEFAULT_STEP_QUESTIONS]
        questions = [asked[s] for s in steps]
        save_baseline(folder, head, BaselineSpec(
            backbone=backbone_name, setting=setting, steps=steps, step_names=[schema.step_names[s] for s in steps],
            step_options=[step_options[s] for s in steps], step_questions=questions,
            image_dim=evaluation.image_embeds.shape[1], text_dim=evaluation.text_embeds.shape[1],
            training=asdict(training), history=history))
        results[setting] = (result, logits, labels)
    return results
