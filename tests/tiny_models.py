"""Tiny random Step-CoT models for fast tests (shared by the test modules)."""

import re

import torch

from modeling_stepcot import StepCoTConfig, StepCoTStudent, StepCoTStudentConfig, StepCoTTeacher

TINY_VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    image_size=32, patch_size=8, projection_dim=24,
)
TINY_TEXT = dict(
    vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
    intermediate_size=64, max_position_embeddings=64,
)
QUESTION_LENGTH = 12


def tiny_teacher_config(**overrides):
    kwargs = dict(
        vision_config=dict(TINY_VISION), text_config=dict(TINY_TEXT), hidden_size=48,
        question_max_length=QUESTION_LENGTH,
    )
    kwargs.update(overrides)
    return StepCoTConfig(**kwargs)


def tiny_student_config(**overrides):
    kwargs = dict(vision_config=dict(TINY_VISION), hidden_size=16)
    kwargs.update(overrides)
    return StepCoTStudentConfig(**kwargs)


def fill_question_tokens(model, seed=0):
    """Deterministic fake token ids for the step questions (no tokenizer needed)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, TINY_TEXT["vocab_size"], model.question_input_ids.shape, generator=generator)
    model.question_input_ids.copy_(ids)
    model.question_attention_mask.fill_(1)
    model._question_cache = None
    return model


def tiny_teacher(seed=0, **overrides):
    torch.manual_seed(seed)
    model = StepCoTTeacher(tiny_teacher_config(**overrides))
    if model.text_encoder is not None:
        fill_question_tokens(model, seed)
    return model


def tiny_student(seed=0, **overrides):
    torch.manual_seed(seed)
    return StepCoTStudent(tiny_student_config(**overrides))


def save_tiny_pair(folder, seed=0):
    """A tiny student and teacher saved as FOLDER/student and FOLDER/teacher (checkpoints for CLI and demo tests)."""
    tiny_student(seed=seed).save_pretrained(folder / "student")
    tiny_teacher(seed=seed).save_pretrained(folder / "teacher")
    return folder


def random_batch(batch_size=4, image_size=32, seed=0, missing_fraction=0.2, config=None):
    """Random images and labels (B, 7) with some -100 entries."""
    from modeling_stepcot import StepCoTConfig

    config = config or StepCoTConfig(vision_config=dict(TINY_VISION), text_config=dict(TINY_TEXT))
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch_size, 3, image_size, image_size, generator=generator)
    labels = torch.stack(
        [torch.randint(0, n, (batch_size,), generator=generator) for n in config.num_classes_per_step], dim=1
    )
    missing = torch.rand(labels.shape, generator=generator) < missing_fraction
    labels[missing] = -100
    return pixel_values, labels


def save_tiny_clip(folder, seed=0):
    """A random CLIPModel (32 px images, 16-d projections) with a BERT word-piece tokenizer whose vocabulary is the
    words of the step questions; the text tower pools at [SEP], CLIP's end-of-text role."""
    import re

    from transformers import BertTokenizerFast, CLIPConfig, CLIPImageProcessor, CLIPModel

    from modeling_stepcot import DEFAULT_STEP_QUESTIONS

    words = sorted({w for q in DEFAULT_STEP_QUESTIONS + ["Question:"] for w in re.findall(r"\w+|[^\w\s]", q.lower())})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    tokenizer = BertTokenizerFast(vocab={word: index for index, word in enumerate(vocab)})
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=40, pad_token_id=0, bos_token_id=2,
                         eos_token_id=3),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def tiny_tokenizer():
    """A word-level BERT tokenizer over the default step questions, within `TINY_TEXT`'s vocabulary."""
    from transformers import BertTokenizerFast

    from modeling_stepcot import DEFAULT_STEP_QUESTIONS

    words = sorted({w for q in DEFAULT_STEP_QUESTIONS for w in re.findall(r"\w+|[^\w\s]", q.lower())})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    assert len(vocab) <= TINY_TEXT["vocab_size"]
    return BertTokenizerFast(vocab={word: index for index, word in enumerate(vocab)})
