"""Image-feature extraction for the feature cache: fast on one process, sharded across many.

- Decoding and preprocessing run in DataLoader workers through `pixel_values_from_images`, the processor's and
  pipeline's own preprocessing function (training and serving see the same pixels).
- The encoder runs in `channels_last` (convolutions ~1.5x faster on CPU; same features to ~1e-5), optionally under
  bf16 autocast (`--extraction_bf16`: ~2x more, features to ~1e-3 relative; cached under their own key).
- Under a multi-process launch (`accelerate launch`, `torchrun`) each rank encodes a contiguous part of the rows
  asked for (a cache shard, `feature_cache.cached_image_embeds`); the parts are gathered in rank order, so every
  rank holds, and rank 0 writes, the same shard a single process would write.
"""

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from modeling_stepcot.processing_stepcot import pixel_values_from_images
from trainers.training.feature_cache import distributed_rank_world


def shard_bounds(num_rows: int, rank: int, world_size: int) -> tuple:
    """Rows [start, stop) of `rank`'s contiguous shard (shards differ by at most one row, in rank order)."""
    base, extra = divmod(num_rows, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class ImageBatches(Dataset):
    """Item i = preprocessed pixel values of the i-th batch of `rows` of a `datasets.Dataset` with an image column."""

    def __init__(self, dataset, rows: range, batch_size: int, size: int, mean, std):
        self.dataset = dataset
        self.batches = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
        self.size, self.mean, self.std = size, mean, std

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        images = self.dataset[list(self.batches[index])]["image"]
        return pixel_values_from_images(images, self.size, self.mean, self.std)


@torch.no_grad()
def extract_image_embeds(model, dataset, processor, batch_size=64, num_workers=2, device="cpu", bf16=False,
                         description="image features", rows: range | None = None):
    """The (frozen) encoder's embeddings of the images of `dataset` (`rows` of it, default all), in row order; under
    a multi-process launch each rank encodes its part and all ranks return the gathered whole."""
    rank, world_size = distributed_rank_world()
    rows = range(len(dataset)) if rows is None else rows
    start, stop = shard_bounds(len(rows), rank, world_size)
    start, stop = rows.start + start, rows.start + stop
    mean, std = processor.image_processor.image_mean, processor.image_processor.image_std
    batches = ImageBatches(dataset, range(start, stop), batch_size, processor.image_size, mean, std)
    loader = DataLoader(batches, batch_size=None, num_workers=num_workers, pin_memory=str(device).startswith("cuda"),
                        persistent_workers=False)
    device = torch.device(device)
    model = model.to(device).eval()
    model.to(memory_format=torch.channels_last)  # 4-D weights only; conv backbones run faster, ViTs are unaffected
    chunks = []
    try:
        for pixel_values in tqdm(loader, desc=description, leave=False, disable=rank != 0):
            pixel_values = pixel_values.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                chunks.append(model.encode_images(pixel_values).float().cpu())
    finally:
        model.to(memory_format=torch.contiguous_format)
    local = torch.cat(chunks) if chunks else torch.empty(0)
    if world_size == 1:
        return local
    shards = [None] * world_size
    torch.distributed.all_gather_object(shards, local)
    return torch.cat([shard for shard in shards if shard.numel()])
