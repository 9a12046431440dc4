"""Step-CoT models for `transformers`.

This folder is the remote-code payload: `save_pretrained` copies `configuration_stepcot.py` and
`modeling_stepcot.py` (and the processor file) into every checkpoint, so `AutoModel.from_pretrained(dir,
trust_remote_code=True)` works without this package. Importing the package registers the classes with the Auto
API for in-library use.
"""

from transformers import AutoConfig, AutoModel, AutoProcessor

from .configuration_stepcot import (
    DEFAULT_STEP_NAMES,
    DEFAULT_STEP_OPTIONS,
    DEFAULT_STEP_QUESTIONS,
    NA_OPTION,
    StepCoTConfig,
    StepCoTSchemaConfig,
    StepCoTStudentConfig,
)
from .modeling_stepcot import (
    StepCoTOutput,
    StepCoTPreTrainedModel,
    StepCoTStudent,
    StepCoTTeacher,
    masked_step_cross_entropy,
    pad_step_logits,
)
from .processing_stepcot import StepCoTDataCollator, StepCoTProcessor

AutoConfig.register(StepCoTConfig.model_type, StepCoTConfig, exist_ok=True)
AutoConfig.register(StepCoTStudentConfig.model_type, StepCoTStudentConfig, exist_ok=True)
AutoModel.register(StepCoTConfig, StepCoTTeacher, exist_ok=True)
AutoModel.register(StepCoTStudentConfig, StepCoTStudent, exist_ok=True)
# Writes `auto_map` and copies the code on save_pretrained.
StepCoTConfig.register_for_auto_class()
StepCoTStudentConfig.register_for_auto_class()
StepCoTTeacher.register_for_auto_class("AutoModel")
StepCoTStudent.register_for_auto_class("AutoModel")
AutoProcessor.register(StepCoTConfig, StepCoTProcessor, exist_ok=True)
AutoProcessor.register(StepCoTStudentConfig, StepCoTProcessor, exist_ok=True)
StepCoTProcessor.register_for_auto_class()

__all__ = [
    "DEFAULT_STEP_NAMES",
    "DEFAULT_STEP_OPTIONS",
    "DEFAULT_STEP_QUESTIONS",
    "NA_OPTION",
    "StepCoTConfig",
    "StepCoTDataCollator",
    "StepCoTOutput",
    "StepCoTPreTrainedModel",
    "StepCoTProcessor",
    "StepCoTSchemaConfig",
    "StepCoTStudent",
    "StepCoTStudentConfig",
    "StepCoTTeacher",
    "masked_step_cross_entropy",
    "pad_step_logits",
]
