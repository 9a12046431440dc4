"""Models of a training run: the teacher, the student and the processor, built around the encoders or read from
saved folders, with the step schema of the training data."""

import logging

from transformers import AutoTokenizer

from modeling_stepcot import StepCoTProcessor, StepCoTStudent, StepCoTTeacher
from trainers.training.offline_encoders import OFFLINE_VISION_ENCODER, local_encoder_path, offline_text_encoder_path
from trainers.training.run_arguments import OFFLINE_TEXT

logger = logging.getLogger("stepcot.train")


def _image_size_kwargs(model_args):
    if model_args.image_size is None:
        return {}
    if model_args.vision_encoder != OFFLINE_VISION_ENCODER:
        raise ValueError("--image_size applies to the efficientnet_lite0 backbone; a CLIP checkpoint fixes its own.")
    return {"image_size": model_args.image_size}


def _adopt_schema(model, schema: dict, source: str):
    """A saved model trained on the same classes takes the data's questions / option names; other class counts fail."""
    if not schema:
        return model
    config = model.config
    counts = [len(options) for options in schema["step_options"]]
    if counts != config.num_classes_per_step:
        raise ValueError(f"{source} has {config.num_classes_per_step} classes per step but the training data has "
                         f"{counts}: its heads cannot be trained on these labels.")
    if schema["step_options"] != config.step_options:
        logger.warning("%s: option names taken from the training data (%s differ from the model's)", source,
                       [i + 1 for i, (a, b) in enumerate(zip(schema["step_options"], config.step_options)) if a != b])
        config.step_options = [list(options) for options in schema["step_options"]]
    if schema.get("step_names") and schema["step_names"] != config.step_names:
        logger.warning("%s: step names taken from the training data (%s)", source, schema["step_names"])
        config.step_names = list(schema["step_names"])
    if isinstance(model, StepCoTTeacher) and schema["step_questions"] != config.step_questions:
        raise ValueError(f"{source} was trained with other step questions than the training data's; its question "
                         "encodings would not match. Train the teacher from the encoders instead.")
    return model


def build_teacher(model_args, schema: dict | None = None, standardize: bool = False):
    """The teacher: a saved one (`--teacher_model`, with its own input standardisation or none), or built around
    the encoders with the data's `schema` (`dataset_schema`: step names, questions and options) and, with
    `standardize`, the buffers of `standardize_image_embeds` (fitted by `fit_image_standardization`)."""
    schema = schema or {}
    if model_args.teacher_model:
        return _adopt_schema(StepCoTTeacher.from_pretrained(model_args.teacher_model), schema,
                             model_args.teacher_model)
    text = offline_text_encoder_path() if model_args.text_encoder == OFFLINE_TEXT else model_args.text_encoder
    return StepCoTTeacher.from_pretrained_encoders(
        vision=model_args.vision_encoder, text=text, freeze_encoders=model_args.freeze_encoders,
        hidden_size=model_args.teacher_hidden_size, use_memory=model_args.use_memory, use_text=model_args.use_text,
        standardize_image_embeds=standardize, **_image_size_kwargs(model_args), **schema,
    )


def build_student(model_args, schema: dict | None = None, standardize: bool = False):
    schema = {k: v for k, v in (schema or {}).items()}
    if model_args.student_model:
        return _adopt_schema(StepCoTStudent.from_pretrained(model_args.student_model), schema,
                             model_args.student_model)
    return StepCoTStudent.from_pretrained_encoders(
        vision=model_args.vision_encoder, freeze_encoders=model_args.freeze_encoders,
        hidden_size=model_args.student_hidden_size, standardize_image_embeds=standardize,
        **_image_size_kwargs(model_args), **schema,
    )


def build_processor(teacher):
    text = local_encoder_path(teacher.config.text_encoder_name_or_path) or offline_text_encoder_path()
    return StepCoTProcessor.from_model_config(teacher.config, AutoTokenizer.from_pretrained(text))
