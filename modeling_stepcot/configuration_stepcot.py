"""Step-CoT configurations: the seven-step schema, the teacher (GAT memory) and the student (light chain)."""

from huggingface_hub.dataclasses import strict
from transformers import BertConfig, CLIPVisionConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

# The seven-step schema. Step 1 and the diagnosis classes are the paper's; the option texts of steps 2-6 are
# not public, so these are our reconstruction (each ending with "N/A", which makes the class counts
# [4, 4, 6, 7, 5, 7, 9] fit). A real release's options are read from its records by the data layer.
NA_OPTION = "N/A"
# A missing answer: a release writes NO_ANSWER (or leaves the answer empty); its label is IGNORE_INDEX, which the
# losses, metrics and calibration skip (PyTorch's cross-entropy default).
NO_ANSWER = "No Answer"
IGNORE_INDEX = -100

DEFAULT_STEP_NAMES = [
    "Detection",
    "Lesion distribution",
    "Radiographic pattern",
    "Anatomical location",
    "Morphologic feature",
    "Secondary effects",
    "Diagnosis",
]

DEFAULT_STEP_QUESTIONS = [
    "Is there any abnormal radiodensity in the lungs?",
    "What is the distribution of the lesion?",
    "What is the radiographic pattern of the lesion?",
    "Where is the lesion located?",
    "What is the morphology of the lesion margin?",
    "Are there secondary effects or associated signs?",
    "What is the most likely radiographic diagnosis?",
]

DEFAULT_STEP_OPTIONS = [
    ["No abnormality", "Increased opacity", "Decreased opacity", "Mixed"],
    ["Focal", "Multifocal", "Diffuse", NA_OPTION],
    ["Consolidation", "Interstitial", "Nodular", "Cavity", "Atelectatic", NA_OPTION],
    [
        "Upper lung zone",
        "Middle lung zone",
        "Lower lung zone",
        "Multiple zones",
        "Pleura/Chest wall",
        "Heart/Mediastinum",
        NA_OPTION,
    ],
    ["Well-circumscribed", "Ill-defined", "Irregular/Spiculated", "Linear/Band-like", NA_OPTION],
    [
        "None",
        "Pleural effusion",
        "Pneumothorax",
        "Volume loss",
        "Mediastinal shift",
        "Cardiac enlargement",
        NA_OPTION,
    ],
    [
        "Normal",
        "Nodule",
        "Atelectasis",
        "Infiltration",
        "Effusion",
        "Pneumonia",
        "Cardiomegaly",
        "Mass",
        "Pneumothorax",
    ],
]

# Positions of the steps in the default schema (`DEFAULT_STEP_NAMES[DIAGNOSIS] == "Diagnosis"`).
DETECTION, DISTRIBUTION, PATTERN, LOCATION, MORPHOLOGY, SECONDARY, DIAGNOSIS = range(len(DEFAULT_STEP_NAMES))

VISION_BACKBONES = ("clip", "efficientnet_lite0")


def _copy_options(options):
    return [list(step) for step in options]


@strict
class StepCoTSchemaConfig(PreTrainedConfig):
    r"""
    Fields shared by the teacher and the student: the step schema and the image encoder.

    Args:
        step_names (`list[str]`): short name of each reasoning step, in order.
        step_questions (`list[str]`): the question asked at each step (the teacher encodes these).
        step_options (`list[list[str]]`): the answer options of each step; the label is the option's index.
            `"N/A"` (clinically irrelevant) must be the last option where a step has it.
        vision_backbone (`str`): `"clip"` (CLIP ViT image tower, as in the paper) or `"efficientnet_lite0"`
            (ImageNet EfficientNet-Lite0, a small offline-available CNN).
        vision_config (`CLIPVisionConfig`): the CLIP vision tower's config (only with `vision_backbone="clip"`).
        image_size (`int`): input resolution; for CLIP it always equals `vision_config.image_size`.
        freeze_vision_encoder (`bool`): keep the image encoder frozen (and in eval mode), as in the paper.
        vision_encoder_name_or_path (`str`, *optional*): where the pretrained image encoder came from (model cards).
        calibration (`dict`, *optional*): per-step softmax temperatures fitted after training,
            `{"method": "temperature", "temperatures": [...], "split": ...}` (written by
            `trainers.evaluation.calibration.calibrate`); the `stepcot-vqa` pipeline divides each step's logits by
            its temperature. None: uncalibrated.
        step_training_counts (`list[int]`, *optional*): per step, how many training examples had a label. A step
            with 0 was never trained: its head is random, so predict, the pipeline and the consistency rules treat
            its answer as unknown. `None` (a model saved before this was recorded): every step counts as trained.
        standardize_image_embeds (`bool`): standardise the pooled image embedding before the heads, per dimension,
            with the training images' mean and scale (the buffers `image_embed_mean` / `image_embed_scale`, set by
            `set_image_embed_standardization` before training): the linear probe's preprocessing. False (the
            paper): the heads read the raw embedding.
        embedding_statistics (`dict`, *optional*): statistics of the training images' embeddings (`mean`, `scale`
            per dimension, `threshold` and `quantile` of the training distances), recorded at export; the pipeline
            flags an image whose embedding lies further out as out of distribution.
    """

    model_type = "stepcot_schema"
    sub_configs_defaults = {"vision_config": SubConfigSpec(CLIPVisionConfig, optional=True)}

    step_names: list[str] | None = None
    step_questions: list[str] | None = None
    step_options: list[list[str]] | None = None
    vision_backbone: str = "clip"
    vision_config: dict | CLIPVisionConfig | None = None
    image_size: int | None = None
    freeze_vision_encoder: bool = True
    vision_encoder_name_or_path: str | None = None
    initializer_range: float = 0.02
    calibration: dict | None = None
    step_training_counts: list[int] | None = None
    standardize_image_embeds: bool = False
    embedding_statistics: dict | None = None

    def __post_init__(self, **kwargs):
        self.step_names = list(self.step_names or DEFAULT_STEP_NAMES)
        self.step_questions = list(self.step_questions or DEFAULT_STEP_QUESTIONS)
        self.step_options = _copy_options(self.step_options or DEFAULT_STEP_OPTIONS)
        if self.vision_backbone == "clip" and self.vision_config is None:
            self.vision_config = CLIPVisionConfig()
        if self.vision_backbone != "clip":
            self.vision_config = None
        super().__post_init__(**kwargs)
        if self.vision_config is not None:
            if self.image_size is not None and self.image_size != self.vision_config.image_size:
                raise ValueError(f"image_size={self.image_size} contradicts vision_config.image_size="
                                 f"{self.vision_config.image_size}: the CLIP tower sets the resolution; set "
                                 "vision_config={'image_size': ...} instead.")
            self.image_size = self.vision_config.image_size
        elif self.image_size is None:
            self.image_size = 224

    def validate_architecture(self):
        """Cross-field checks (run by `@strict`)."""
        if self.vision_backbone not in VISION_BACKBONES:
            raise ValueError(f"vision_backbone must be one of {VISION_BACKBONES}, got {self.vision_backbone!r}.")
        lengths = {len(self.step_names), len(self.step_questions), len(self.step_options)}
        if len(lengths) != 1:
            raise ValueError(
                "step_names, step_questions and step_options must have one entry per step, got "
                f"{len(self.step_names)}, {len(self.step_questions)} and {len(self.step_options)}."
            )
        for name, options in zip(self.step_names, self.step_options):
            if len(options) < 2:
                raise ValueError(f"Step {name!r} needs at least 2 options, got {options}.")
            if len(set(options)) != len(options):
                raise ValueError(f"Step {name!r} has duplicate options: {options}.")
            if NA_OPTION in options and options[-1] != NA_OPTION:
                raise ValueError(f"Step {name!r}: {NA_OPTION!r} must be the last option, got {options}.")
        counts = self.step_training_counts
        if counts is not None and (len(counts) != len(self.step_names) or any(int(c) < 0 for c in counts)):
            raise ValueError(f"step_training_counts needs one count >= 0 per step ({len(self.step_names)}), "
                             f"got {counts}.")

    @property
    def num_steps(self) -> int:
        return len(self.step_names)

    @property
    def num_classes_per_step(self) -> list[int]:
        return [len(options) for options in self.step_options]

    @property
    def trained_steps(self) -> list[bool]:
        """Per step, whether it had training labels (all True when that was not recorded)."""
        if self.step_training_counts is None:
            return [True] * self.num_steps
        return [int(count) > 0 for count in self.step_training_counts]

    def na_label(self, step: int) -> int | None:
        """The label of the step's "N/A" option, or None when the step has none."""
        options = self.step_options[step]
        return len(options) - 1 if options[-1] == NA_OPTION else None


@strict
class StepCoTConfig(StepCoTSchemaConfig):
    r"""
    Configuration of the Step-CoT **teacher**: question embeddings from a text encoder, a learnable memory node,
    a stacked multi-head GAT over the step and memory nodes, per-step heads on the projected image embedding and
    a GRU write-back of each step's prediction into the memory.

    Args:
        text_config (`BertConfig`): the question encoder (BERT-base in the paper). Unused when `use_text=False`.
        hidden_size (`int`): node / fusion width H (768 in the paper).
        gat_num_heads (`int`), gat_num_layers (`int`): GAT heads (concatenated, width H/heads each) and layers.
        gat_attention_dropout (`float`): dropout on the GAT attention weights.
        gat_negative_slope (`float`): LeakyReLU slope of the GAT scores.
        fusion_dropout (`float`): dropout after the step/memory fusion.
        image_projection_dropout (`float`): dropout after the image projections.
        per_step_image_projection (`bool`): one image projection per step, as in the paper (its step heads are
            step-specific, image projection included; the encoder still runs once per image). False: one projection
            shared by all steps, the layout of teacher checkpoints saved before this option existed (load those with
            `from_pretrained(path, per_step_image_projection=False)`).
        classifier_dropout (`float`): dropout inside each step's MLP head.
        use_memory (`bool`): ablation "w/o Memory" when False (no memory node, no GRU write-back).
        use_text (`bool`): ablation "w/o Text" when False (learned step embeddings replace the encoded questions).
        freeze_text_encoder (`bool`): keep the question encoder frozen; its outputs are then cached.
        question_max_length (`int`): token length of the encoded questions (128 in the paper).
        text_encoder_name_or_path (`str`, *optional*): where the pretrained text encoder came from.

    Example:

    ```python
    >>> from modeling_stepcot import StepCoTConfig, StepCoTTeacher
    >>> config = StepCoTConfig()            # the paper's sizes, random weights
    >>> model = StepCoTTeacher(config)
    >>> config.num_classes_per_step
    [4, 4, 6, 7, 5, 7, 9]
    ```
    """

    model_type = "stepcot"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(CLIPVisionConfig, optional=True),
        "text_config": SubConfigSpec(BertConfig, optional=True),
    }

    text_config: dict | BertConfig | None = None
    hidden_size: int = 768
    gat_num_heads: int = 4
    gat_num_layers: int = 2
    gat_attention_dropout: float = 0.1
    gat_negative_slope: float = 0.2
    fusion_dropout: float = 0.2
    image_projection_dropout: float = 0.3
    per_step_image_projection: bool = True
    classifier_dropout: float = 0.2
    use_memory: bool = True
    use_text: bool = True
    freeze_text_encoder: bool = True
    question_max_length: int = 128
    text_encoder_name_or_path: str | None = None

    def __post_init__(self, **kwargs):
        if self.use_text and self.text_config is None:
            self.text_config = BertConfig()
        if not self.use_text:
            self.text_config = None
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        super().validate_architecture()
        if self.hidden_size % self.gat_num_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by gat_num_heads ({self.gat_num_heads})."
            )
        if self.gat_num_layers < 1:
            raise ValueError(f"gat_num_layers must be >= 1, got {self.gat_num_layers}.")


@strict
class StepCoTStudentConfig(StepCoTSchemaConfig):
    r"""
    Configuration of the Step-CoT **student**: image encoder, a projection to `hidden_size` (512 in the paper) and
    one light linear head per step, with the residual update `f <- f + tanh(logits_i @ W_i)` between steps.

    Args:
        hidden_size (`int`): width of the projected image feature.
        projection_dropout (`float`): dropout after the projection.

    Example:

    ```python
    >>> from modeling_stepcot import StepCoTStudentConfig, StepCoTStudent
    >>> model = StepCoTStudent(StepCoTStudentConfig())
    ```
    """

    model_type = "stepcot_student"

    hidden_size: int = 512
    projection_dropout: float = 0.3


__all__ = [
    "DEFAULT_STEP_NAMES",
    "DEFAULT_STEP_OPTIONS",
    "DEFAULT_STEP_QUESTIONS",
    "DETECTION",
    "DIAGNOSIS",
    "DISTRIBUTION",
    "IGNORE_INDEX",
    "LOCATION",
    "MORPHOLOGY",
    "NA_OPTION",
    "NO_ANSWER",
    "PATTERN",
    "SECONDARY",
    "VISION_BACKBONES",
    "StepCoTConfig",
    "StepCoTSchemaConfig",
    "StepCoTStudentConfig",
]
