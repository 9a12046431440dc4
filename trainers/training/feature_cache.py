"""Image-feature cache for training the heads on frozen encoders.

A frozen encoder maps the same image to the same embedding in every epoch, so we run it once per dataset and
train on the stored embeddings. Cache files are safetensors, keyed by the dataset's fingerprint and by the
encoder's identity (backbone, input size and a digest of its weights), so a changed dataset, preprocessing or
encoder never reads stale features.
"""

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


def tensors_fingerprint(named_tensors, name: str = "") -> str:
    """Digest of a name and of (key, tensor) pairs, in the order given."""
    digest = hashlib.sha256(name.encode())
    for key, tensor in named_tensors:
        digest.update(key.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def module_fingerprint(module, name: str = "") -> str:
    """Digest of a name and every weight of `module` (a changed checkpoint never reads stale cached features)."""
    return tensors_fingerprint(module.state_dict().items(), name)


def save_file_atomically(tensors: dict, path, metadata=None):
    """`safetensors.save_file` to a temporary name in the same folder, then rename: a killed write never leaves a
    truncated file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, temporary, metadata=metadata)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def encoder_fingerprint(model) -> str:
    """Digest of a Step-CoT model's image encoder: backbone, input size and every weight (~1 s for ViT-B/32)."""
    return module_fingerprint(model.vision_encoder, f"{model.config.vision_backbone}:{model.config.image_size}")


def cache_key(dataset_fingerprint: str, encoder_digest: str, extra: dict | None = None) -> str:
    payload = json.dumps({"data": dataset_fingerprint, "encoder": encoder_digest, **(extra or {})}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


@torch.no_grad()
def compute_image_embeds(model, batches, total=None, device="cpu", description="image features"):
    """Run the model's (frozen) image encoder over `batches` (an iterable of pixel_values tensors)."""
    model = model.to(device).eval()
    chunks = []
    for pixel_values in tqdm(batches, total=total, desc=description, leave=False):
        chunks.append(model.encode_images(pixel_values.to(device)).float().cpu())
    return torch.cat(chunks) if chunks else torch.empty(0)


def split_identity(dataset, split: str, image_size: int, image_processor) -> tuple[str, dict]:
    """(dataset fingerprint, extra key fields) naming one split's features for one preprocessing."""
    return (f"{dataset._fingerprint}:{split}:{len(dataset)}:{image_size}",
            {"mean": image_processor.image_mean, "std": image_processor.image_std})


def image_embeds_path(cache_dir, dataset_fingerprint, encoder_digest, extra=None) -> Path:
    return Path(cache_dir) / f"image_embeds-{cache_key(dataset_fingerprint, encoder_digest, extra)}.safetensors"


def cached_image_embeds(model, batches, dataset_fingerprint, cache_dir, total=None, device="cpu", extra=None,
                        encoder_digest=None, num_rows=None, compute=None, write=True):
    """Embeddings from `cache_dir` when present for this dataset + encoder, else computed and stored.
    Pass `encoder_digest` (from `encoder_fingerprint`) when caching several splits, to hash the weights once.
    `compute`: a callable returning the embeddings, instead of encoding `batches`; `write=False`: compute without
    storing (the other ranks of a multi-process run, where rank 0 writes)."""
    encoder_digest = encoder_digest or encoder_fingerprint(model)
    path = image_embeds_path(cache_dir, dataset_fingerprint, encoder_digest, extra)
    if path.is_file():
        embeds = _read_cached_embeds(path, num_rows)
        if embeds is not None:
            return embeds, path, True
    embeds = compute() if compute is not None else compute_image_embeds(model, batches, total=total, device=device)
    if write:
        embeds = embeds.contiguous()
        save_file_atomically({"image_embeds": embeds}, path, metadata={
            "dataset": dataset_fingerprint, "backbone": model.config.vision_backbone,
            "shape": json.dumps(list(embeds.shape)), "content_digest": content_digest(embeds)})
    return embeds, path, False


def content_digest(tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes: what a feature cache records when written and checks on read."""
    digest = hashlib.sha256(f"{tensor.dtype}:{list(tensor.shape)}".encode())
    digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _read_cached_embeds(path: Path, num_rows=None):
    """The cached embeddings, or None (with a warning) when the file is damaged (truncated, holding the wrong
    number of rows), or its shape or content differs from what was recorded when it was written (another width,
    replaced values, a file without a recorded digest); the caller then rebuilds it. Never used unverified."""
    try:
        with safe_open(str(path), framework="pt") as reader:
            metadata = reader.metadata() or {}
        embeds = load_file(path)["image_embeds"]
    except (SafetensorError, KeyError, OSError, ValueError) as error:
        logger.warning("damaged feature cache %s (%s): rebuilding it", path, error)
        return None
    recorded_shape, recorded_digest = metadata.get("shape"), metadata.get("content_digest")
    if recorded_shape != json.dumps(list(embeds.shape)) or recorded_digest != content_digest(embeds):
        logger.warning("feature cache %s holds %s values that differ from what was written (recorded shape %s, "
                       "digest %s): rebuilding it", path, list(embeds.shape), recorded_shape,
                       (recorded_digest or "none")[:12])
        return None
    if embeds.ndim != 2 or (num_rows is not None and embeds.shape[0] != num_rows) or not torch.isfinite(embeds).all():
        logger.warning("damaged feature cache %s (shape %s or non-finite values): rebuilding it", path,
                       tuple(embeds.shape))
        return None
    return embeds


class EmbeddingDataset(Dataset):
    """Rows of cached features + labels, ready for `default_data_collator` and the distillation pair."""

    def __init__(self, image_embeds, labels, student_image_embeds=None):
        labels = torch.as_tensor(labels, dtype=torch.long)
        if image_embeds.shape[0] != labels.shape[0]:
            raise ValueError(f"{image_embeds.shape[0]} embeddings but {labels.shape[0]} label rows.")
        if student_image_embeds is not None and student_image_embeds.shape[0] != labels.shape[0]:
            raise ValueError(f"{student_image_embeds.shape[0]} student embeddings but {labels.shape[0]} label rows.")
        self.image_embeds = image_embeds
        self.student_image_embeds = student_image_embeds
        self.labels = labels

    def __len__(self):
        return self.labels.shape[0]

    def __getitem__(self, index):
        row = {"image_embeds": self.image_embeds[index], "labels": self.labels[index]}
        if self.student_image_embeds is not None:
            row["student_image_embeds"] = self.student_image_embeds[index]
        return row
