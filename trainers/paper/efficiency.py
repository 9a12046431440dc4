"""`stepcot bench-efficiency`: parameters, latency and peak memory of the teacher, the student and the baselines
(the paper's Table 11).

    stepcot bench-efficiency --device cpu --models vision_encoder teacher student clip blip flava
    stepcot bench-efficiency --device cuda --models teacher student hf:openai/clip-vit-base-patch32 --out eff.json

Models (random weights at the paper's shapes unless loaded from a checkpoint):
- `vision_encoder`: the CLIP ViT-B/32 image tower with its projection, the frozen part shared by both models.
- `teacher`: Step-CoT teacher, hidden 768, BERT-base question encoder (its question embeddings are computed once
  and cached, as in use), all seven steps.
- `student`: Step-CoT student, hidden 512, all seven steps.
- `clip`, `blip`, `flava`: the baseline of `stepcot baseline` (App. C.1) on a randomly initialised CLIP ViT-B/32,
  BLIP base (384 px) or FLAVA full: the image embedding, then the shared MLP (hidden 768) for all seven steps. The
  seven question embeddings are computed once beforehand (they do not depend on the image), so per image only the
  image tower and the MLP run; the parameter count includes the text tower, as the paper's does.
- `hf:NAME`: the same baseline on a real checkpoint (Hub id or folder), e.g. `hf:openai/clip-vit-base-patch32`.
- `dir:PATH`: a saved Step-CoT teacher or student folder.

Measurements: each model runs in its own subprocess (so peak memory is its own), on random pixel values at the
model's input size. ms/sample = median wall time of a batch of 1; ms/batch = median for a batch of --batch-size;
ms/sample in batch = that divided by the batch size; two warm-up calls first; on CUDA the device is synchronised
around each call. Peak memory: on CUDA `torch.cuda.max_memory_allocated` (tensors only); always the process's peak
resident set size (ru_maxrss: Python, torch and the weights included, so it is never small).
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

from modeling_stepcot import StepCoTConfig, StepCoTStudent, StepCoTStudentConfig, StepCoTTeacher
from modeling_stepcot.configuration_stepcot import DEFAULT_STEP_OPTIONS, DEFAULT_STEP_QUESTIONS
from trainers.choices import EFFICIENCY_DEFAULT_MODELS, EFFICIENCY_PRESETS
from trainers.model_loading import load_model
from trainers.paper.baselines import QUESTION_PREFIX, StepBaselineHead, load_backbone, pooled_output

PRESETS, DEFAULT_MODELS = EFFICIENCY_PRESETS, EFFICIENCY_DEFAULT_MODELS

# Small shapes for smoke tests (`--tiny`): same code paths, a second instead of minutes.
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=32,
                   patch_size=8)
TINY_TEXT = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                 max_position_embeddings=32, pad_token_id=0, bos_token_id=1, eos_token_id=2)


class BaselineInference(nn.Module):
    """What a trained baseline does per image: the backbone's pooled image embedding, then the shared MLP once per
    step with that step's (precomputed) question embedding. Returns the seven steps' logits."""

    def __init__(self, backbone_model: nn.Module, question_embeds: torch.Tensor, num_classes_per_step: list[int],
                 hidden_size: int = 768):
        super().__init__()
        self.backbone = backbone_model.eval().requires_grad_(False)
        self.register_buffer("question_embeds", question_embeds)
        image_dim = self._image_embeds(self._example_pixels()).shape[-1]
        self.head = StepBaselineHead(image_dim, question_embeds.shape[-1], num_classes_per_step, hidden_size)
        self.num_classes_per_step = list(num_classes_per_step)

    def _example_pixels(self):
        return torch.zeros(1, 3, self.image_size, self.image_size)

    @property
    def image_size(self) -> int:
        config = self.backbone.config
        vision = getattr(config, "vision_config", None) or getattr(config, "image_config", None)
        return int(vision.image_size)

    @torch.no_grad()
    def _image_embeds(self, pixel_values):
        return pooled_output(self.backbone.get_image_features(pixel_values=pixel_values))

    def forward(self, pixel_values):
        image_embeds = self._image_embeds(pixel_values)
        batch = image_embeds.shape[0]
        return [
            self.head(image_embeds, self.question_embeds[step].expand(batch, -1),
                      torch.full((batch,), step, device=image_embeds.device))[:, :count]
            for step, count in enumerate(self.num_classes_per_step)
        ]


def _random_question_embeds(model: nn.Module, num_steps: int, seed: int = 0) -> torch.Tensor:
    """Text-tower embeddings of random token ids (the real questions need the checkpoint's tokenizer; the cost is
    paid once, outside the timed loop, either way)."""
    config = model.config
    text = getattr(config, "text_config", None)
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, min(1000, text.vocab_size), (num_steps, 16), generator=generator)
    with torch.no_grad():
        return pooled_output(model.get_text_features(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)))


def _backbone_config(name: str, tiny: bool):
    from transformers import BlipConfig, CLIPConfig, FlavaConfig

    if name == "clip":
        if not tiny:
            return CLIPConfig()
        return CLIPConfig(text_config=TINY_TEXT, vision_config=TINY_VISION, projection_dim=16)
    if name == "blip":
        tiny_text = dict(TINY_TEXT, encoder_hidden_size=32, sep_token_id=3)
        if not tiny:
            return BlipConfig()
        return BlipConfig(text_config=tiny_text, vision_config=TINY_VISION, projection_dim=16)
    layers = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
    return (FlavaConfig(image_config=dict(layers, image_size=32, patch_size=8),
                        text_config=dict(layers, vocab_size=100, max_position_embeddings=32),
                        multimodal_config=layers, projection_dim=16, hidden_size=32) if tiny else FlavaConfig())


def build_model(name: str, tiny: bool = False) -> tuple[nn.Module, int]:
    """(model, input image size) for a preset, `hf:NAME` or `dir:PATH`."""
    classes = [len(options) for options in DEFAULT_STEP_OPTIONS]
    if name in ("vision_encoder", "teacher", "student"):
        vision = dict(vision_config=TINY_VISION) if tiny else {}
        if name == "teacher":
            extra = dict(text_config=TINY_TEXT, hidden_size=32, question_max_length=16) if tiny else {}
            model = StepCoTTeacher(StepCoTConfig(**vision, **extra))
            model.question_input_ids.random_(1000 if not tiny else 5, 20000 if not tiny else 100)
            model.question_attention_mask.fill_(1)
            return model, model.config.image_size
        student = StepCoTStudent(StepCoTStudentConfig(**vision, **(dict(hidden_size=16) if tiny else {})))
        return (student.vision_encoder if name == "vision_encoder" else student), student.config.image_size
    if name in ("clip", "blip", "flava"):
        from transformers import BlipModel, CLIPModel, FlavaModel

        model_class = {"clip": CLIPModel, "blip": BlipModel, "flava": FlavaModel}[name]
        backbone = model_class(_backbone_config(name, tiny))
        wrapper = BaselineInference(backbone, _random_question_embeds(backbone, len(classes)), classes,
                                    hidden_size=32 if tiny else 768)
        return wrapper, wrapper.image_size
    if name.startswith("hf:"):
        loaded = load_backbone(name[3:])
        if loaded.kind != "transformers":
            raise ValueError(f"{name}: only transformers backbones can be timed here (open_clip: not yet).")
        questions = loaded.embed_texts([QUESTION_PREFIX + q for q in DEFAULT_STEP_QUESTIONS])
        wrapper = BaselineInference(loaded.model, questions, classes)
        return wrapper, wrapper.image_size
    if name.startswith("dir:"):
        model = load_model(name[4:])
        return model, model.config.image_size
    raise ValueError(f"unknown model {name!r}: use one of {PRESETS}, hf:NAME or dir:PATH.")


def _count_on_meta(build) -> int:
    with torch.device("meta"):  # shapes only: no weights are allocated
        return sum(p.numel() for p in build().parameters())


def paper_comparable_parameters(config) -> dict:
    """Parameters of a Step-CoT teacher or student as the paper's Table 11 counts them, from its config alone (on the
    meta device): the model itself, plus, with a CLIP backbone, CLIP's text tower (which the paper's models load
    with the image tower but never run), plus, for the teacher, BERT's pooler (loaded, unused). The text tower is
    CLIP's default (ViT-B/32's) unless the model came with a different one, which its config does not record.

    Paper, ViT-B/32 + BERT-base, seven steps: teacher 283.66 M, student 151.56 M."""
    from transformers import BertModel, CLIPConfig, CLIPModel, CLIPVisionModelWithProjection


    model_class = StepCoTTeacher if isinstance(config, StepCoTConfig) else StepCoTStudent
    model = _count_on_meta(lambda: model_class(config))
    unused_text_tower = pooler = 0
    if config.vision_backbone == "clip":
        vision = config.vision_config
        clip = CLIPConfig(vision_config=vision.to_dict(), projection_dim=vision.projection_dim)
        unused_text_tower = _count_on_meta(lambda: CLIPModel(clip)) - _count_on_meta(
            lambda: CLIPVisionModelWithProjection(clip.vision_config))
    if model_class is StepCoTTeacher and config.use_text:
        text = config.text_config
        pooler = _count_on_meta(lambda: BertModel(text)) - _count_on_meta(
            lambda: BertModel(text, add_pooling_layer=False))
    return {"model": model, "unused_clip_text_tower": unused_text_tower, "unused_bert_pooler": pooler,
            "paper_comparable": model + unused_text_tower + pooler}


def _paper_parameters_M(model: nn.Module):
    """Table 11's count for a Step-CoT teacher or student; for a baseline (text tower already included) its own."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", "") in ("stepcot", "stepcot_student"):
        return round(paper_comparable_parameters(config)["paper_comparable"] / 1e6, 2)
    if isinstance(model, BaselineInference):
        return round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
    return None


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_calls(model: nn.Module, pixel_values: torch.Tensor, repeats: int, device: str = "cpu") -> float:
    """Median milliseconds of `model(pixel_values)` over `repeats` calls, after two warm-up calls (which also fill
    the teacher's question cache)."""
    with torch.inference_mode():
        for _ in range(2):
            model(pixel_values)
        _synchronize(device)
        timings = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(pixel_values)
            _synchronize(device)
            timings.append(time.perf_counter() - start)
    return statistics.median(timings) * 1000


def measure(name: str, batch_size: int = 32, repeats: int = 5, device: str = "cpu", tiny: bool = False,
            threads: int | None = None) -> dict:
    """One row of the table: parameters, latency at batch 1 and at `batch_size`, peak memory."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, image_size = build_model(name, tiny)
    model = model.to(device).eval()
    parameters = sum(p.numel() for p in model.parameters())
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    batch = torch.randn(batch_size, 3, image_size, image_size, device=device)
    single = torch.randn(1, 3, image_size, image_size, device=device)
    ms_batch = time_calls(model, batch, repeats, device)
    ms_single = time_calls(model, single, repeats * 4, device)
    row = {
        "model": name,
        "parameters_M": round(parameters / 1e6, 2),
        "paper_parameters_M": _paper_parameters_M(model),
        "ms_per_sample_batch1": round(ms_single, 2),
        f"ms_per_batch{batch_size}": round(ms_batch, 1),
        "ms_per_sample_in_batch": round(ms_batch / batch_size, 2),
        # ru_maxrss is in KiB on Linux.
        "peak_rss_MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0),
    }
    if device.startswith("cuda"):
        row["peak_cuda_MB"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return row


def measure_in_subprocess(name: str, batch_size: int, repeats: int, device: str, tiny: bool = False,
                          threads: int | None = None) -> dict:
    """`measure` of one model in a fresh process. A command line is the interface here on purpose: each model must
    start from an empty process, so that its peak memory and its thread set-up are its own, not left over from the
    models measured before it."""
    command = [sys.executable, "-m", "trainers.cli", "bench-efficiency", "--only", name,
               "--batch-size", str(batch_size), "--repeats", str(repeats), "--device", device]
    command += ["--tiny"] if tiny else []
    command += ["--threads", str(threads)] if threads else []
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"measuring {name} failed (exit {result.returncode}):\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure_all(models, batch_size: int = 32, repeats: int = 5, device: str = "cpu", tiny: bool = False,
                isolate: bool = True, threads: int | None = None) -> list[dict]:
    rows = []
    for name in models:
        rows.append(measure_in_subprocess(name, batch_size, repeats, device, tiny, threads) if isolate
                    else measure(name, batch_size, repeats, device, tiny, threads))
    if rows and rows[0]["model"] == "vision_encoder":  # relative cost against the frozen encoder alone
        batch_key = f"ms_per_batch{batch_size}"
        for row in rows:
            row["x_vision_encoder"] = round(row[batch_key] / rows[0][batch_key], 3)
    return rows


def environment(device: str, threads: int | None = None) -> str:
    if device.startswith("cuda"):
        where = torch.cuda.get_device_name(0)
    else:
        where = platform.processor() or platform.machine()
    return f"torch {torch.__version__}, {threads or torch.get_num_threads()} threads, {device}: {where}"


def markdown(rows: list[dict], batch_size: int, device: str, threads: int | None = None) -> str:
    columns = [("model", "Model"), ("parameters_M", "Params (M)"), ("paper_parameters_M", "Params as Table 11 (M)"),
               ("ms_per_sample_batch1", "ms/sample (batch 1)"),
               (f"ms_per_batch{batch_size}", f"ms/batch ({batch_size})"),
               ("ms_per_sample_in_batch", "ms/sample in batch"), ("peak_rss_MB", "Peak RSS (MB)")]
    if any("peak_cuda_MB" in row for row in rows):
        columns.append(("peak_cuda_MB", "Peak CUDA (MB)"))
    if any("x_vision_encoder" in row for row in rows):
        columns.append(("x_vision_encoder", "× encoder (batch)"))
    lines = ["| " + " | ".join(title for _, title in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(key, "")) for key, _ in columns) + " |" for row in rows]
    lines += [
        "",
        f"{environment(device, threads)}. Random weights at the paper's shapes (no Hub). Median of repeated calls "
        "after two warm-ups. Peak RSS: the measuring process's peak resident memory (Python + torch + weights); "
        "Peak CUDA: torch.cuda.max_memory_allocated. Baseline rows run the image tower + MLP per image (question "
        "embeddings precomputed); their parameter counts include the text tower. 'Params as Table 11': the Step-CoT "
        "models counted as the paper counts them (plus CLIP's unused text tower and, for the teacher, BERT's unused "
        "pooler; paper: teacher 283.66 M, student 151.56 M).",
    ]
    return "\n".join(lines) + "\n"
