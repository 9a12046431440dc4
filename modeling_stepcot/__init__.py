"""Step-CoT models for `transformers`.

This folder is the remote-code payload: `save_pretrained` copies `configuration_stepcot.py` and
`modeling_stepcot.py` with the siblings they import (and the processor and pipeline files) into every checkpoint,
so `AutoModel.from_pretrained(dir, trust_remote_code=True)` works without this package. Importing the package
registers the classes with the Auto API for in-library use.
"""

from transformers import AutoConfig, AutoModel, AutoProcessor
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_stepcot import (
    DEFAULT_STEP_NAMES,
    DEFAULT_STEP_OPTIONS,
    DEFAULT_STEP_QUESTIONS,
    IGNORE_INDEX,
    NA_OPTION,
    NO_ANSWER,
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
from .pipeline_stepcot import TASK as PIPELINE_TASK
from .pipeline_stepcot import StepCoTVQAPipeline
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
# `pipeline("stepcot-vqa", model=DIR)`; checkpoints can also carry it as remote code (custom_pipelines).
if PIPELINE_TASK not in PIPELINE_REGISTRY.supported_tasks:
    PIPELINE_REGISTRY.register_pipeline(
        PIPELINE_TASK, pipeline_class=StepCoTVQAPipeline, pt_model=AutoModel, type="image"
    )

__all__ = [
    "DEFAULT_STEP_NAMES",
    "DEFAULT_STEP_OPTIONS",
    "DEFAULT_STEP_QUESTIONS",
    "IGNORE_INDEX",
    "NA_OPTION",
    "NO_ANSWER",
    "StepCoTConfig",
    "StepCoTDataCollator",
    "StepCoTOutput",
    "StepCoTPreTrainedModel",
    "StepCoTProcessor",
    "StepCoTSchemaConfig",
    "StepCoTStudent",
    "StepCoTStudentConfig",
    "StepCoTTeacher",
    "StepCoTVQAPipeline",
    "masked_step_cross_entropy",
    "pad_step_logits",
]
