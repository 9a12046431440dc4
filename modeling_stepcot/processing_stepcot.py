"""Step-CoT processor: chest X-ray images -> `pixel_values`, step questions -> tokens, and a batch collator.

This file ships inside checkpoints (remote code): it imports only torch, transformers, PIL, numpy and its siblings
`configuration_stepcot` and `modeling_stepcot` (the backbones' input normalisation).

    >>> processor = StepCoTProcessor.from_model_config(model.config, tokenizer)
    >>> train = load_dataset("fl-15o/Step-CoT", split="train").with_transform(processor.dataset_transform)
    >>> loader = DataLoader(train, batch_size=32, collate_fn=StepCoTDataCollator(processor), num_workers=2)
    >>> model(**next(iter(loader)))
"""

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import ProcessorMixin
from transformers.feature_extraction_utils import BatchFeature

from .backbones_stepcot import VISION_ENCODERS
from .configuration_stepcot import DEFAULT_STEP_QUESTIONS

# Decompression-bomb guard: an image above this many pixels is refused from its header, before decoding (a
# 10,000 x 10,000 chest X-ray is larger than any real one).
MAX_IMAGE_PIXELS = 10_000 * 10_000
# EXIF orientations that swap width and height (rotated by 90 or 270 degrees, possibly mirrored).
EXIF_ORIENTATION_TAG = 0x0112
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)


def exif_orientation(image) -> int:
    """The EXIF orientation of a PIL image (1, upright, when it has none)."""
    try:
        value = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except (AttributeError, OSError, SyntaxError, ValueError):
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def upright_size(image) -> tuple[int, int]:
    """(width, height) of the image as displayed: swapped when its EXIF orientation rotates it by 90 degrees."""
    width, height = image.size
    return (height, width) if exif_orientation(image) in _TRANSPOSED_ORIENTATIONS else (width, height)


def image_to_8bit(image) -> Image.Image:
    """An 8-bit PIL image ("L" or "RGB") from a PIL image or array of any depth, upright.

    This is where every image becomes pixels (build, training, prediction, the demo), so the EXIF orientation is
    applied here (`ImageOps.exif_transpose`: a phone photo of a film is turned as it is displayed). 16-bit /
    32-bit / float grayscale (common for X-rays) is windowed to its own min-max range; alpha is dropped (X-ray PNGs
    carry an opaque alpha channel); palette, 1-bit and CMYK images are converted.
    """
    if isinstance(image, Image.Image) and exif_orientation(image) != 1:
        from PIL import ImageOps

        image = ImageOps.exif_transpose(image)
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.dtype == np.uint8:
            return Image.fromarray(array[..., :3] if array.ndim == 3 else array)
        return Image.fromarray(_window_to_uint8(array[..., :3] if array.ndim == 3 else array))
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image or numpy array, got {type(image).__name__}")
    mode = image.mode
    if mode in ("L", "RGB"):
        return image
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_window_to_uint8(np.asarray(image)))
    if mode == "LA":
        return image.getchannel("L")
    if mode in ("1", "P", "PA", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "La", "RGBa"):
        return image.convert("RGB")
    raise ValueError(f"unsupported image mode {mode!r}")


def _window_to_uint8(array: np.ndarray) -> np.ndarray:
    array = array.astype(np.float32)
    low, high = float(array.min()), float(array.max())
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    return np.round((array - low) * (255.0 / (high - low))).astype(np.uint8)


def image_to_rgb(image, size: int | None = None) -> Image.Image:
    """8-bit RGB, box-reduced cheaply towards `size` first when the image is much larger (several times faster than
    resizing the full image). JPEGs are decoded at full scale: `datasets` hands training images over already
    decoded, so a reduced-scale (draft) decode at inference would give other pixels than training saw."""
    image = image_to_8bit(image)
    if size is not None:
        factor = min(image.size) // (2 * size)
        if factor >= 2:
            image = image.reduce(factor)
    return image if image.mode == "RGB" else image.convert("RGB")


def pixel_values_from_images(images, size: int, mean, std) -> torch.Tensor:
    """(B, 3, size, size) float32 from PIL images or arrays: 8-bit RGB (`image_to_rgb`), the whole image resized
    (bicubic with antialiasing, rounded to 8 bit as PIL does), rescaled to [0, 1] and normalised with `mean`/`std`.

    The one preprocessing function of the project: the feature cache that models train on, the processor, the
    pipeline and `stepcot eval` all call it, so a model sees the same pixels in training and in use.
    """
    if isinstance(images, (Image.Image, np.ndarray)):
        images = [images]
    mean = torch.as_tensor(mean, dtype=torch.float32)[:, None, None]
    std = torch.as_tensor(std, dtype=torch.float32)[:, None, None]
    pixels = []
    for image in images:
        rgb = torch.from_numpy(np.array(image_to_rgb(image, size), dtype=np.uint8)).permute(2, 0, 1)
        if tuple(rgb.shape[1:]) != (size, size):
            resized = F.interpolate(rgb[None].float(), size=(size, size), mode="bicubic", antialias=True)[0]
            rgb = resized.round_().clamp_(0, 255)
        pixels.append(rgb.float())
    if not pixels:
        return torch.empty(0, 3, size, size)
    return (torch.stack(pixels) * (1 / 255.0) - mean) / std


def image_processor_for_config(config):
    """Resize the whole image (no crop: lung edges matter) to the model's `image_size` and normalise with the
    backbone's mean/std. The image half of `StepCoTProcessor`; needs no tokenizer."""
    # The PIL backend by name: the same numbers with or without torchvision, and no notice about falling back.
    from transformers import CLIPImageProcessorPil

    size = int(config.image_size)
    encoder = VISION_ENCODERS[config.vision_backbone]  # the backbone's own normalisation
    mean, std = list(encoder.image_mean), list(encoder.image_std)
    return CLIPImageProcessorPil(
        do_resize=True,
        size={"height": size, "width": size},
        do_center_crop=False,
        crop_size={"height": size, "width": size},
        do_normalize=True,
        image_mean=mean,
        image_std=std,
        do_convert_rgb=True,
    )


class StepCoTProcessor(ProcessorMixin):
    r"""
    Image processor + tokenizer + the step questions of a Step-CoT model (one per step of its config).

    Images (grayscale, 16-bit, RGBA...) become 8-bit RGB, resized to the model's `image_size` (whole image, no
    crop: lung edges matter) and normalised with the backbone's mean/std by `pixel_values_from_images`, the
    function that also computes the training features (the image processor holds the size, mean and std). The
    step questions are tokenized to `question_max_length` tokens, exactly as the teacher's stored question buffers.

    Args:
        image_processor (`CLIPImageProcessorPil`): resize + rescale + normalise.
        tokenizer (`PreTrainedTokenizerBase`): the teacher's question tokenizer (BERT family).
        step_questions (`list[str]`, *optional*): default `DEFAULT_STEP_QUESTIONS`.
        question_max_length (`int`): token length of the questions (the teacher's `question_max_length`).
    """

    def __init__(self, image_processor=None, tokenizer=None, step_questions=None, question_max_length=128, **kwargs):
        self.step_questions = list(step_questions or DEFAULT_STEP_QUESTIONS)
        self.question_max_length = int(question_max_length)
        self._question_tokens = None
        super().__init__(image_processor, tokenizer, **kwargs)

    @classmethod
    def from_model_config(cls, config, tokenizer, **kwargs):
        """The processor matching a teacher or student config: its image size, backbone normalisation, questions."""
        image_processor = image_processor_for_config(config)
        return cls(
            image_processor,
            tokenizer,
            step_questions=list(config.step_questions),
            question_max_length=getattr(config, "question_max_length", 128),
            **kwargs,
        )

    @property
    def image_size(self) -> int:
        size = self.image_processor.size
        return int(size["height"]) if "height" in size else int(size["shortest_edge"])

    @property
    def model_input_names(self):
        return ["pixel_values", "question_input_ids", "question_attention_mask"]

    # -- images ------------------------------------------------------------------------------------------------

    def preprocess_images(self, images) -> torch.Tensor:
        """(B, 3, image_size, image_size) float32 from one image or a list (PIL images or arrays)."""
        processor = self.image_processor
        return pixel_values_from_images(images, self.image_size, processor.image_mean, processor.image_std)

    # -- questions ---------------------------------------------------------------------------------------------

    def question_tokens(self) -> dict:
        """`question_input_ids` / `question_attention_mask`, each (num_steps, question_max_length) long."""
        if self._question_tokens is None:
            tokens = self.tokenizer(
                self.step_questions,
                padding="max_length",
                truncation=True,
                max_length=self.question_max_length,
                return_tensors="pt",
            )
            self._question_tokens = {
                "question_input_ids": tokens["input_ids"].long(),
                "question_attention_mask": tokens["attention_mask"].long(),
            }
        return {key: value.clone() for key, value in self._question_tokens.items()}

    # -- call --------------------------------------------------------------------------------------------------

    def __call__(self, images=None, text=None, return_questions=False, return_tensors="pt", **kwargs):
        """`images` -> `pixel_values`; `text` -> `input_ids`/`attention_mask` (tokenizer kwargs pass through);
        `return_questions=True` adds the step question tokens."""
        if images is None and text is None and not return_questions:
            raise ValueError("Pass `images`, `text` or `return_questions=True`.")
        data = {}
        if images is not None:
            data["pixel_values"] = self.preprocess_images(images)
        if text is not None:
            data.update(self.tokenizer(text, return_tensors="pt", **kwargs))
        if return_questions:
            data.update(self.question_tokens())
        return BatchFeature(data=data, tensor_type=None if return_tensors == "pt" else return_tensors)

    def dataset_transform(self, batch: dict) -> dict:
        """For `datasets.Dataset.with_transform`: decodes and preprocesses images lazily, per accessed batch.
        Keeps `labels`; drops the text columns (the model does not read them)."""
        if "image" not in batch:
            raise KeyError(f"the dataset has no 'image' column (columns: {list(batch)})")
        out = {"pixel_values": self.preprocess_images(list(batch["image"]))}
        if "labels" in batch:
            out["labels"] = torch.as_tensor(np.asarray(batch["labels"], dtype=np.int64))
        return out


class StepCoTDataCollator:
    """Batches examples into the model's inputs.

    Examples may be preprocessed (`pixel_values` from `processor.dataset_transform`) or raw (`image`, PIL, as a
    `datasets` row); `labels` (one int per step of the config, -100 = missing) become a (B, num_steps) long tensor.
    The step question tokens, (num_steps, L), are shared by the batch (`include_questions=False` leaves them out,
    e.g. for the student).
    """

    def __init__(self, processor: StepCoTProcessor, include_questions: bool = True):
        self.processor = processor
        self.include_questions = include_questions

    def __call__(self, examples: list[dict]) -> dict:
        if not examples:
            raise ValueError("cannot collate an empty batch")
        if "pixel_values" in examples[0]:
            pixel_values = torch.stack([torch.as_tensor(example["pixel_values"]) for example in examples])
        elif "image" in examples[0]:
            pixel_values = self.processor.preprocess_images([example["image"] for example in examples])
        else:
            raise KeyError(f"examples need 'pixel_values' or 'image', got keys {sorted(examples[0])}")
        batch = {"pixel_values": pixel_values.float()}
        if "labels" in examples[0]:
            labels = torch.stack([torch.as_tensor(example["labels"], dtype=torch.long) for example in examples])
            if labels.dim() != 2:
                raise ValueError(
                    f"labels must be one list of step labels per example, got shape {tuple(labels.shape)}"
                )
            batch["labels"] = labels
        if self.include_questions:
            batch.update(self.processor.question_tokens())
        return batch


__all__ = [
    "StepCoTDataCollator",
    "StepCoTProcessor",
    "image_processor_for_config",
    "image_to_8bit",
    "image_to_rgb",
    "pixel_values_from_images",
]
