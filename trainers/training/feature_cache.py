"""Image-feature cache for training the heads on frozen encoders.

A frozen encoder maps the same image to the same embedding in every epoch, so we run it once per dataset and
train on the stored embeddings. Cache files are safetensors, keyed by the dataset's fingerprint and by the
encoder's identity (backbone, input size and a digest of its weights), so a changed dataset, preprocessing or
encoder never reads stale features. A cache is a folder of fixed-size row shards, each written atomically and
verified on read (metadata, content digest, finite values); training reads their rows on demand.
"""

import hashlib
import json
import logging
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch.utils.data import Dataset
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

SHARD_ROWS = 8192  # rows per cache shard: 40 MiB at 1280 float32 features, the unit an extraction resumes at


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
    """The folder holding one split's cached features for one encoder: row shards `shard-NNNNN.safetensors`."""
    return Path(cache_dir) / f"image_embeds-{cache_key(dataset_fingerprint, encoder_digest, extra)}"


def distributed_rank_world() -> tuple[int, int]:
    """(rank, world size) of a multi-process launch (`accelerate launch`, `torchrun`), else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def cached_image_embeds(model, batches, dataset_fingerprint, cache_dir, total=None, device="cpu", extra=None,
                        encoder_digest=None, num_rows=None, compute=None, encode_rows=None, shard_rows=SHARD_ROWS):
    """Embeddings from `cache_dir` when present for this dataset + encoder, else computed and stored; returns
    (embeddings, cache folder, whether every row was read from the cache). Read embeddings are a `CachedEmbeds`
    (rows read from the shards on demand); computed ones the tensor.

    The cache is a folder of `shard_rows`-row shards, each written atomically: `encode_rows(start, stop)` (the
    embeddings of rows [start, stop), gathered across the ranks of a multi-process launch) encodes only the shards
    that are missing or damaged, so an interrupted extraction resumes at its first missing shard. Without it,
    `compute` (a callable returning every embedding) or the encoder over `batches` gives them. Pass `encoder_digest`
    (from `encoder_fingerprint`) when caching several splits, to hash the weights once. Under a multi-process launch
    every rank takes part in each shard and rank 0 writes it (a rank that does not see it afterwards, on a folder
    that is not shared, writes its own copy)."""
    encoder_digest = encoder_digest or encoder_fingerprint(model)
    folder = image_embeds_path(cache_dir, dataset_fingerprint, encoder_digest, extra)
    expected = {"dataset": dataset_fingerprint, "encoder": encoder_digest}
    if num_rows is None and encode_rows is None:
        num_rows = _recorded_rows(folder / shard_name(0))
    shards = _verified_shards(folder, expected, num_rows, shard_rows) if num_rows is not None else {}
    ranges = shard_ranges(num_rows, shard_rows) if num_rows is not None else None
    missing = _agreed_missing(None if ranges is None else [i for i in range(len(ranges)) if i not in shards])
    if missing == [] and shards:
        return CachedEmbeds([shards[i] for i in range(len(ranges))]), folder, True
    computed = None
    if encode_rows is None:
        computed = compute() if compute is not None else compute_image_embeds(model, batches, total=total,
                                                                               device=device)
        if num_rows != computed.shape[0]:
            num_rows, shards = computed.shape[0], {}
        ranges = shard_ranges(num_rows, shard_rows)
        missing = [i for i in range(len(ranges)) if i not in shards]
        def encode_rows(start, stop):
            return computed[start:stop]
    if shards:
        logger.info("feature cache %s: %d of %d shards present, encoding the other %d", folder, len(shards),
                    len(ranges), len(missing))
    if num_rows == 0:
        return torch.empty(0), folder, False
    rank, world_size = distributed_rank_world()
    metadata = {**expected, "backbone": model.config.vision_backbone, "num_rows": str(num_rows)}
    for index in missing:
        start, stop = ranges[index]
        rows = encode_rows(start, stop).float().contiguous()
        path = folder / shard_name(index)
        if rank == 0:
            _write_shard(path, rows, metadata, start, stop)
        if world_size > 1:
            torch.distributed.barrier()  # rank 0's shard is complete before the others look for it
            if rank != 0 and not path.is_file():
                _write_shard(path, rows, metadata, start, stop)
    for index in missing:
        shards[index] = _open_shard(folder / shard_name(index), expected, num_rows, *ranges[index])
        if shards[index] is None:
            raise OSError(f"feature cache {folder}: shard {index} does not read back after writing it")
    embeds = CachedEmbeds([shards[i] for i in range(len(ranges))])
    return (computed if computed is not None else embeds), folder, False


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def shard_ranges(num_rows: int, shard_rows: int = SHARD_ROWS) -> list:
    """Rows [start, stop) of each shard: `shard_rows` each, the last one shorter."""
    return [(start, min(start + shard_rows, num_rows)) for start in range(0, num_rows, shard_rows)]


def _agreed_missing(missing):
    """The shards some rank lacks (`None`: unknown, every shard), the same list on every rank."""
    rank, world_size = distributed_rank_world()
    if world_size == 1:
        return missing
    views = [None] * world_size
    torch.distributed.all_gather_object(views, missing)
    if any(view is None for view in views):
        return None
    return sorted({index for view in views for index in view})


def _write_shard(path: Path, rows, metadata: dict, start: int, stop: int):
    save_file_atomically({"image_embeds": rows}, path, metadata={
        **metadata, "rows": f"{start}:{stop}", "shape": json.dumps(list(rows.shape)),
        "content_digest": content_digest(rows)})


def content_digest(tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes: what a feature cache records when written and checks on read."""
    digest = hashlib.sha256(f"{tensor.dtype}:{list(tensor.shape)}".encode())
    digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _values_digest(path: Path, offset: int, shape: list, chunk_bytes: int = 4 * 2**20) -> tuple:
    """(`content_digest`, whether every value is finite) of the float32 rows at `offset` of a file, read in chunks
    (bounded memory at any cache size)."""
    digest, finite = hashlib.sha256(f"{torch.float32}:{shape}".encode()), True
    remaining = 4 * math.prod(shape)
    with open(path, "rb") as handle:
        handle.seek(offset)
        while remaining:
            chunk = handle.read(min(remaining, chunk_bytes))
            if not chunk:
                return None, False
            digest.update(chunk)
            finite = finite and bool(np.isfinite(np.frombuffer(chunk, dtype=np.float32)).all())
            remaining -= len(chunk)
    return digest.hexdigest(), finite


def _shard_layout(path: Path):
    """(metadata, shape, byte offset) of the float32 `image_embeds` tensor of a safetensors file, from its header
    (8-byte little-endian length, then JSON); a file too short for what its header describes raises ValueError."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ValueError(f"{size} bytes, shorter than a safetensors header")
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            raise ValueError(f"a {length}-byte header in a {size}-byte file")
        header = json.loads(handle.read(length))
    entry = header["image_embeds"]
    begin, end = entry["data_offsets"]
    shape = [int(n) for n in entry["shape"]]
    if entry["dtype"] != "F32" or end - begin != 4 * math.prod(shape):
        raise ValueError(f"image_embeds is {entry['dtype']} {shape} over {end - begin} bytes, not float32")
    if 8 + length + end > size:
        raise ValueError(f"truncated: {size} bytes, the header describes {8 + length + end}")
    return header.get("__metadata__") or {}, shape, 8 + length + begin


def _recorded_rows(path: Path):
    """The row count a shard's metadata records for its whole cache, or None."""
    try:
        return int(_shard_layout(path)[0]["num_rows"])
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None


@dataclass(frozen=True)
class Shard:
    """One verified shard: its file, the byte offset and shape of its rows."""

    path: Path
    offset: int
    rows: int
    width: int


def _open_shard(path: Path, expected: dict, num_rows: int, start: int, stop: int):
    """The shard at `path` when it holds rows [start, stop) of the cache `expected` names (dataset, encoder digest)
    with the values recorded when it was written, finite; else None with a one-line warning (a missing file: None,
    quietly). The caller then re-makes it. Never used unverified."""
    if not path.is_file():
        return None
    try:
        metadata, shape, offset = _shard_layout(path)
    except (OSError, ValueError, KeyError, TypeError, struct.error) as error:
        logger.warning("damaged feature-cache shard %s (%s): re-making it", path, error)
        return None
    wanted = {**expected, "num_rows": str(num_rows), "rows": f"{start}:{stop}"}
    stale = sorted(key for key, value in wanted.items() if metadata.get(key) != value)
    if stale:
        logger.warning("feature-cache shard %s belongs to another cache (its %s differ): re-making it", path,
                       ", ".join(stale))
        return None
    recorded_shape, recorded_digest = metadata.get("shape"), metadata.get("content_digest")
    valid = len(shape) == 2 and shape[0] == stop - start and recorded_shape == json.dumps(shape)
    if valid:
        valid = _values_digest(path, offset, shape) == (recorded_digest, True)
    if not valid:
        logger.warning("feature-cache shard %s holds %s values that differ from what was written (recorded shape %s, "
                       "digest %s) or are not finite: re-making it", path, shape, recorded_shape,
                       (recorded_digest or "none")[:12])
        return None
    return Shard(path, offset, shape[0], shape[1])


def _verified_shards(folder: Path, expected: dict, num_rows: int, shard_rows: int) -> dict:
    """{shard index: Shard} of the shards of `folder` that verify (`_open_shard`)."""
    shards = {}
    for index, (start, stop) in enumerate(shard_ranges(num_rows, shard_rows)):
        shard = _open_shard(folder / shard_name(index), expected, num_rows, start, stop)
        if shard is not None:
            shards[index] = shard
    return shards


def open_image_embeds(folder, num_rows=None, shard_rows=SHARD_ROWS):
    """The verified cache in `folder` (every shard present, consistent, with its recorded values), else None: for
    readers of a cache that `stepcot train` wrote (baselines, studies)."""
    folder = Path(folder)
    num_rows = num_rows if num_rows is not None else _recorded_rows(folder / shard_name(0))
    if num_rows is None:
        return None
    first = _shard_layout(folder / shard_name(0))[0]
    expected = {key: first.get(key) for key in ("dataset", "encoder")}
    shards = _verified_shards(folder, expected, num_rows, shard_rows)
    count = len(shard_ranges(num_rows, shard_rows))
    return CachedEmbeds([shards[i] for i in range(count)]) if len(shards) == count else None


class CachedEmbeds:
    """The rows of a verified feature cache, read from its shard files on demand: indexing (an int, a slice, a list
    or tensor of indices) returns a tensor of those rows, read with positional reads (`os.preadv`) straight into
    it. Nothing is mapped or kept: resident memory stays flat over an epoch at any cache size (the kernel's page
    cache, outside the process, keeps a file that is read again). Torch functions given it (`torch.equal`,
    `torch.cat`, ...) see the whole tensor."""

    def __init__(self, shards: list):
        widths = {shard.width for shard in shards}
        if len(widths) > 1:
            raise ValueError(f"feature-cache shards of different widths {sorted(widths)}")
        self.shards = shards
        self.starts = np.cumsum([0] + [shard.rows for shard in shards])
        self.shape = torch.Size([int(self.starts[-1]), widths.pop() if widths else 0])
        self.dtype = torch.float32
        self._files = {}

    def __len__(self):
        return self.shape[0]

    def __getstate__(self):  # DataLoader workers started by spawn open the files themselves
        return {**self.__dict__, "_files": {}}

    def __del__(self):
        for descriptor in getattr(self, "_files", {}).values():
            os.close(descriptor)

    def _read(self, out: np.ndarray, shard: int, first_row: int):
        """Rows first_row.. of `shard` (local numbering) into the contiguous float32 array `out`."""
        descriptor = self._files.get(shard)
        if descriptor is None:
            descriptor = self._files[shard] = os.open(self.shards[shard].path, os.O_RDONLY)
        buffer = memoryview(out).cast("B")
        offset = self.shards[shard].offset + first_row * 4 * self.shape[1]
        while buffer:
            got = os.preadv(descriptor, [buffer], offset)
            if got == 0:
                raise OSError(f"feature-cache shard {self.shards[shard].path} ends early (changed since verified)")
            buffer, offset = buffer[got:], offset + got

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return self._gather(np.arange(start, stop, step))
            out = np.empty((max(stop - start, 0), self.shape[1]), dtype=np.float32)
            for shard in range(len(self.shards)):
                low, high = max(start, self.starts[shard]), min(stop, self.starts[shard + 1])
                if low < high:
                    self._read(out[low - start:high - start], shard, low - self.starts[shard])
            return torch.from_numpy(out)
        array = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index)
        if array.ndim == 0:
            return self._gather(array.astype(np.int64).reshape(1))[0]
        return self._gather(array.astype(np.int64).reshape(-1))

    def _gather(self, positions: np.ndarray):
        positions = np.where(positions < 0, positions + len(self), positions)
        if positions.size and (positions.min() < 0 or positions.max() >= len(self)):
            raise IndexError(f"rows out of range of a {len(self)}-row feature cache")
        out = np.empty((positions.size, self.shape[1]), dtype=np.float32)
        owners = np.searchsorted(self.starts, positions, side="right") - 1
        for row, (position, shard) in enumerate(zip(positions.tolist(), owners.tolist())):
            self._read(out[row], shard, position - int(self.starts[shard]))
        return torch.from_numpy(out)

    def to_tensor(self) -> torch.Tensor:
        """Every row, in memory."""
        return self[:]

    def numpy(self) -> np.ndarray:
        """Every row, in memory, as the array `Tensor.numpy` gives (the probe and the OOD statistics fit on all)."""
        return self.to_tensor().numpy()

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        def whole(value):
            if isinstance(value, CachedEmbeds):
                return value.to_tensor()
            return type(value)(whole(item) for item in value) if isinstance(value, (list, tuple)) else value

        return func(*whole(args), **{key: whole(value) for key, value in (kwargs or {}).items()})


class EmbeddingDataset(Dataset):
    """Rows of cached features (tensors or `CachedEmbeds`, read on demand) + labels, ready for `default_data_collator`
    and the distillation pair."""

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

    def __getitems__(self, indices):
        """A batch's rows, read with one gather per cache (the DataLoader's batched fetch)."""
        columns = {"image_embeds": self.image_embeds[indices], "labels": self.labels[indices]}
        if self.student_image_embeds is not None:
            columns["student_image_embeds"] = self.student_image_embeds[indices]
        return [{key: value[row] for key, value in columns.items()} for row in range(len(indices))]
