"""Train/serve parity on real radiographs: the image features a model trains on (the feature cache,
`extract_image_embeds` over a `datasets` image column) equal, within 1e-5, the features of the processor and the
pipeline for the same files: real PNGs and JPEGs of several sizes, larger and smaller than the model's input."""

import numpy as np
import pytest
import torch
from datasets import Dataset, Image
from PIL import Image as PILImage
from transformers import AutoTokenizer

from modeling_stepcot import StepCoTProcessor, StepCoTStudent
from modeling_stepcot.pipeline_stepcot import StepCoTVQAPipeline
from modeling_stepcot.processing_stepcot import image_processor_for_config
from trainers.training.extraction import extract_image_embeds
from trainers.training.offline_encoders import offline_encoders_available, offline_text_encoder_path


def _real_files(shared_data_dir, tmp_path):
    jpegs = sorted((shared_data_dir / "kermany-pediatric-cxr").glob("*.jpeg"))[:3]  # 968-1776 px
    pngs = sorted((shared_data_dir / "kermany-pediatric-cxr-480").rglob("*.png"))[:2]  # 320 px
    pngs += sorted((shared_data_dir / "actualmed-covid-cxr").rglob("*.png"))[:1]  # 384 px
    if len(jpegs) < 3 or len(pngs) < 3:
        pytest.skip(f"real radiographs not found under {shared_data_dir}")
    small = tmp_path / "small.png"  # below the model's input size: upsampled
    PILImage.open(pngs[0]).convert("L").resize((150, 180)).save(small)
    wide16 = tmp_path / "sixteen_bit.png"  # 16-bit grey, windowed to 8 bit
    array = np.asarray(PILImage.open(pngs[1]).convert("L"), dtype=np.uint16) * 200
    PILImage.fromarray(array).save(wide16)
    small_jpeg = tmp_path / "small.jpeg"
    PILImage.open(jpegs[0]).convert("L").resize((500, 410)).save(small_jpeg, quality=90)
    files = [str(path) for path in jpegs + pngs + [small, wide16, small_jpeg]]
    sizes = {PILImage.open(path).size for path in files}
    assert min(min(size) for size in sizes) < 224 < max(max(size) for size in sizes)
    return files


@pytest.fixture(scope="module")
def student():
    if not offline_encoders_available():
        pytest.skip("offline encoder packages not installed")
    return StepCoTStudent.from_pretrained_encoders(vision="efficientnet_lite0", hidden_size=32).eval()


def test_training_features_equal_processor_and_pipeline_features(student, shared_data_dir, tmp_path):
    files = _real_files(shared_data_dir, tmp_path)
    dataset = Dataset.from_dict({"image": files}).cast_column("image", Image())  # as `stepcot data build` stores
    tokenizer = AutoTokenizer.from_pretrained(offline_text_encoder_path())
    processor = StepCoTProcessor.from_model_config(student.config, tokenizer)
    cached = extract_image_embeds(student, dataset, processor, batch_size=4, num_workers=0)

    pipe = StepCoTVQAPipeline(model=student, device="cpu")
    with torch.no_grad():
        served = torch.cat([student.encode_images(pipe.preprocess(path)["pixel_values"]) for path in files])
        processed = student.encode_images(processor(images=[PILImage.open(path) for path in files])["pixel_values"])
    assert cached.shape == served.shape and cached.shape[0] == len(files)
    torch.testing.assert_close(served, cached, rtol=0, atol=1e-5)
    torch.testing.assert_close(processed, cached, rtol=0, atol=1e-5)


def test_pipeline_and_training_pixels_are_identical(student, shared_data_dir, tmp_path):
    """Bit-identical pixels, JPEGs included (a reduced-scale JPEG decode at inference would differ)."""
    from trainers.training.extraction import ImageBatches

    files = _real_files(shared_data_dir, tmp_path)
    dataset = Dataset.from_dict({"image": files}).cast_column("image", Image())
    config = student.config
    image_processor = image_processor_for_config(config)
    batches = ImageBatches(dataset, range(len(files)), len(files), int(config.image_size), image_processor.image_mean,
                           image_processor.image_std)
    pipe = StepCoTVQAPipeline(model=student, device="cpu")
    served = torch.cat([pipe.preprocess(path)["pixel_values"] for path in files])
    assert torch.equal(batches[0], served)
