"""Teacher and student: shapes, masking, each equation of the spec, ablations, encoder calls, gradients."""

import json

import pytest
import torch
import torch.nn.functional as F
from tiny_models import random_batch, tiny_student, tiny_teacher, tiny_teacher_config

from modeling_stepcot import (
    StepCoTConfig,
    StepCoTStudent,
    StepCoTStudentConfig,
    StepCoTTeacher,
    masked_step_cross_entropy,
)
from modeling_stepcot.layers_stepcot import StepCoTGATLayer
from modeling_stepcot.modeling_stepcot import PADDED_LOGIT

CLASSES = [4, 4, 6, 7, 5, 7, 9]


def test_default_config_is_the_papers_schema():
    config = StepCoTConfig()
    assert config.num_classes_per_step == CLASSES
    assert config.hidden_size == 768 and config.gat_num_heads == 4 and config.gat_num_layers == 2
    assert config.step_questions[0] == "Is there any abnormal radiodensity in the lungs?"
    assert [config.na_label(s) for s in range(7)] == [None, 3, 5, 6, 4, 6, None]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(hidden_size=50), "divisible by gat_num_heads"),
        (dict(vision_backbone="resnet"), "vision_backbone must be one of"),
        (dict(step_names=["a", "b"]), "one entry per step"),
        (dict(step_options=[["x", "N/A", "y"]] * 7), "must be the last option"),
    ],
)
def test_config_rejects_inconsistent_fields(overrides, message):
    with pytest.raises(Exception, match=message):
        tiny_teacher_config(**overrides)


@pytest.mark.parametrize("factory", [tiny_teacher, tiny_student])
def test_output_shapes_and_padding(factory):
    model = factory().eval()
    pixel_values, labels = random_batch(3)
    out = model(pixel_values=pixel_values, labels=labels)
    assert out.logits.shape == (3, 7, 9)
    assert [tuple(logits.shape) for logits in out.step_logits] == [(3, n) for n in CLASSES]
    for step, n in enumerate(CLASSES):
        assert torch.equal(out.logits[:, step, :n], out.step_logits[step])
        assert torch.all(out.logits[:, step, n:] == PADDED_LOGIT)
        # padded classes get no probability mass
        assert out.logits[:, step].softmax(-1)[:, n:].sum() < 1e-6
    assert out.step_losses.shape == (7,)
    assert torch.isclose(out.loss, out.step_losses.sum())


def test_masked_cross_entropy_matches_hand_computation_and_never_nans():
    torch.manual_seed(0)
    logits = [torch.randn(3, n) for n in (4, 6)]
    labels = torch.tensor([[1, -100], [-100, -100], [3, -100]])
    losses = masked_step_cross_entropy(logits, labels)
    expected_first = -(logits[0][0].log_softmax(-1)[1] + logits[0][2].log_softmax(-1)[3]) / 2
    assert torch.isclose(losses[0], expected_first)
    assert losses[1] == 0 and not torch.isnan(losses).any()  # all-missing step gives 0
    # a batch of one and an all-missing batch
    model = tiny_teacher()
    pixel_values, _ = random_batch(1)
    out = model(pixel_values=pixel_values, labels=torch.full((1, 7), -100))
    assert out.loss.item() == 0.0
    out.loss.backward()  # graph stays usable


@torch.no_grad()
def test_gat_layer_matches_hand_computation():
    config = tiny_teacher_config(hidden_size=4, gat_num_heads=2, gat_attention_dropout=0.0)
    layer = StepCoTGATLayer(config).eval()
    torch.manual_seed(1)
    for parameter in layer.parameters():
        torch.nn.init.normal_(parameter)
    nodes = torch.randn(1, 3, 4)
    out, attention = layer(nodes)

    W = layer.projection.weight
    projected = nodes[0] @ W.T  # (3, 4)
    expected = torch.zeros(3, 4)
    for head in range(2):
        h = projected[:, head * 2 : head * 2 + 2]
        a_src, a_dst = layer.attention_source[head], layer.attention_target[head]
        for i in range(3):
            scores = torch.stack([F.leaky_relu(a_src @ h[i] + a_dst @ h[j], 0.2) for j in range(3)])
            alpha = scores.exp() / scores.exp().sum()
            assert torch.allclose(attention[0, head, i], alpha, atol=1e-6)
            expected[i, head * 2 : head * 2 + 2] = (alpha[:, None] * h).sum(0)
    residual = nodes[0] @ layer.residual.weight.T + layer.residual.bias
    expected = F.elu(F.layer_norm(expected + residual, (4,), layer.layer_norm.weight, layer.layer_norm.bias))
    assert torch.allclose(out[0], expected, atol=1e-5)
    assert torch.allclose(attention.sum(-1), torch.ones(1, 2, 3))


def _teacher_by_the_equations(model, pixel_values):
    """The spec's teacher, written out step by step from the model's own modules."""
    embeds = model.encode_images(pixel_values)  # the encoder runs once; each step projects it with its own head
    questions = model.question_projection(model.encode_questions())
    batch = embeds.shape[0]
    nodes = torch.cat([questions.expand(batch, -1, -1), model.memory_init.expand(batch, 1, -1)], 1)
    all_logits = []
    for step, head in enumerate(model.step_heads):
        for layer in model.gat_layers:
            nodes, _ = layer(nodes)
        memory = nodes[:, -1]
        context = model.fusion_norm(model.fusion(torch.cat([nodes[:, step], memory], -1)))
        image = model.image_projections[step](embeds)
        logits = head.classifier(head.mlp(torch.cat([image, context], -1)))
        all_logits.append(logits)
        p = logits.softmax(-1)
        e = torch.einsum("bc,ch->bh", p, head.classifier.weight)  # prediction embedding
        memory = model.memory_update(model.prediction_to_memory(e), memory)
        nodes = torch.cat([nodes[:, :-1], memory[:, None]], 1)
    return all_logits


def test_teacher_forward_follows_the_equations_including_memory_write_back():
    model = tiny_teacher().eval()
    pixel_values, _ = random_batch(2)
    with torch.no_grad():
        expected = _teacher_by_the_equations(model, pixel_values)
        out = model(pixel_values=pixel_values)
    for got, want in zip(out.step_logits, expected):
        assert torch.allclose(got, want, atol=1e-5)


def test_teacher_has_one_image_projection_per_step_and_encodes_each_image_once():
    model = tiny_teacher().eval()
    assert len(model.image_projections) == model.num_steps
    calls = []
    model.vision_encoder.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        out = model(pixel_values=random_batch(3)[0])
    assert len(calls) == 1
    assert out.image_features.shape == (3, model.num_steps, model.config.hidden_size)
    assert not torch.allclose(out.image_features[:, 0], out.image_features[:, 1])  # step-specific projections


def test_teacher_saved_with_a_shared_projection_loads_only_when_asked(tmp_path):
    old = tiny_teacher(per_step_image_projection=False).eval()
    old.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.pop("per_step_image_projection")  # a config written without the option
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="per_step_image_projection=False"):
        StepCoTTeacher.from_pretrained(tmp_path)
    loaded = StepCoTTeacher.from_pretrained(tmp_path, per_step_image_projection=False).eval()
    pixel_values = random_batch(2)[0]
    with torch.no_grad():
        assert torch.allclose(loaded(pixel_values=pixel_values).logits, old(pixel_values=pixel_values).logits)


def test_student_residual_chain_follows_the_equation():
    model = tiny_student().eval()
    pixel_values, _ = random_batch(2)
    with torch.no_grad():
        out = model(pixel_values=pixel_values)
        feature = model.image_projection(model.encode_images(pixel_values))
        assert torch.allclose(out.image_features, feature)
        for step, head in enumerate(model.step_heads):
            assert torch.allclose(out.step_features[:, step], feature, atol=1e-6)
            logits = feature @ head.weight.T + head.bias
            assert torch.allclose(out.step_logits[step], logits, atol=1e-5)
            feature = feature + torch.tanh(logits @ head.weight)


def _perturb_first_classifier(model):
    with torch.no_grad():
        model.step_heads[0].classifier.weight.add_(torch.randn_like(model.step_heads[0].classifier.weight))


def test_memory_carries_earlier_predictions_and_its_ablation_cuts_that_path():
    pixel_values, _ = random_batch(2)
    for use_memory, expect_change in [(True, True), (False, False)]:
        model = tiny_teacher(use_memory=use_memory).eval()
        with torch.no_grad():
            before = model(pixel_values=pixel_values).step_logits[3].clone()
            _perturb_first_classifier(model)
            after = model(pixel_values=pixel_values).step_logits[3]
        assert (not torch.allclose(before, after)) == expect_change
    ablated = tiny_teacher(use_memory=False)
    assert ablated.memory_init is None and ablated.memory_update is None
    out = ablated(pixel_values=pixel_values, output_attentions=True)
    assert out.gat_attentions[0].shape[-1] == 7  # step nodes only


def test_text_ablation_ignores_questions_and_has_no_text_encoder():
    pixel_values, _ = random_batch(2)
    ablated = tiny_teacher(use_text=False).eval()
    assert ablated.text_encoder is None and ablated.config.text_config is None
    assert not any("text_encoder" in name for name, _ in ablated.named_parameters())
    with torch.no_grad():
        base = ablated(pixel_values=pixel_values).logits
        other = ablated(pixel_values=pixel_values, question_input_ids=torch.ones(7, 12, dtype=torch.long)).logits
    assert torch.equal(base, other)
    full = tiny_teacher().eval()
    with torch.no_grad():
        a = full(pixel_values=pixel_values).logits
        b = full(pixel_values=pixel_values, question_input_ids=torch.full((7, 12), 7, dtype=torch.long)).logits
    assert not torch.allclose(a, b)  # the questions matter to the full teacher


def test_gat_attentions_are_returned_per_step_and_normalised():
    model = tiny_teacher().eval()
    pixel_values, _ = random_batch(2)
    out = model(pixel_values=pixel_values, output_attentions=True)
    assert len(out.gat_attentions) == 7
    assert out.gat_attentions[0].shape == (2, 2, 4, 8, 8)  # (B, layers, heads, nodes, nodes)
    assert torch.allclose(out.gat_attentions[4].sum(-1), torch.ones(2, 2, 4, 8), atol=1e-5)
    assert model(pixel_values=pixel_values).gat_attentions is None


def _count_calls(module):
    calls = []
    module.register_forward_hook(lambda *args: calls.append(1))
    return calls


def test_image_encoded_once_and_questions_cached():
    model = tiny_teacher()
    vision_calls = _count_calls(model.vision_encoder)
    text_calls = _count_calls(model.text_encoder)
    pixel_values, labels = random_batch(4)
    model(pixel_values=pixel_values, labels=labels)
    assert len(vision_calls) == 1
    assert len(text_calls) == 1  # cold cache
    for _ in range(3):
        model(pixel_values=pixel_values, labels=labels)
    assert len(vision_calls) == 4 and len(text_calls) == 1  # warm cache: text encoder not run again
    # Same questions passed by a collator (B, steps, L) also hit the cache.
    ids = model.question_input_ids.unsqueeze(0).expand(4, -1, -1)
    model(pixel_values=pixel_values, question_input_ids=ids, question_attention_mask=torch.ones_like(ids))
    assert len(text_calls) == 1
    # Precomputed image embeddings skip the vision encoder entirely.
    model(image_embeds=model.encode_images(pixel_values))
    assert len(vision_calls) == 6


def test_question_cache_is_invalidated_when_encoder_weights_or_questions_change():
    model = tiny_teacher().eval()
    pixel_values, _ = random_batch(2)
    with torch.no_grad():
        first = model(pixel_values=pixel_values).logits
        state = {k: v + 0.01 if k.startswith("text_encoder.") and v.is_floating_point() else v
                 for k, v in model.state_dict().items()}
        model.load_state_dict(state)
        second = model(pixel_values=pixel_values).logits
    assert not torch.allclose(first, second)
    fresh = tiny_teacher().eval()
    fresh.load_state_dict(state)
    with torch.no_grad():
        assert torch.allclose(fresh(pixel_values=pixel_values).logits, second, atol=1e-6)


def test_unconfigured_questions_give_a_clear_error():
    model = tiny_teacher()
    model.question_attention_mask.zero_()
    with pytest.raises(ValueError, match="set_question_tokens"):
        model(pixel_values=random_batch(1)[0])


def test_gradients_reach_trainable_parts_not_frozen_encoders():
    model = tiny_teacher().train()
    pixel_values, labels = random_batch(4, missing_fraction=0.0)
    model(pixel_values=pixel_values, labels=labels).loss.backward()
    frozen = [n for n, p in model.named_parameters() if n.startswith(("vision_encoder.", "text_encoder."))]
    assert frozen and all(not model.get_parameter(n).requires_grad for n in frozen)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    missing = [n for n, p in trainable if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, missing
    # frozen encoders stay in eval mode while the model trains
    assert model.training and not model.vision_encoder.training and not model.text_encoder.training


def test_encoders_can_be_unfrozen():
    model = tiny_teacher(freeze_vision_encoder=False, freeze_text_encoder=False).train()
    pixel_values, labels = random_batch(4, missing_fraction=0.0)
    model(pixel_values=pixel_values, labels=labels).loss.backward()
    assert model.vision_encoder.training
    assert any(p.grad is not None for p in model.vision_encoder.parameters())
    assert any(p.grad is not None for p in model.text_encoder.parameters())
    student = tiny_student(freeze_vision_encoder=False)
    student(pixel_values=pixel_values, labels=labels).loss.backward()
    assert any(p.grad is not None for p in student.vision_encoder.parameters())


def test_efficientnet_backbone_builds_and_runs_at_any_resolution():
    model = tiny_teacher(vision_backbone="efficientnet_lite0").eval()
    assert model.config.vision_config is None and model.vision_encoder.output_dim == 1280
    with torch.no_grad():
        out = model(pixel_values=torch.randn(2, 3, 64, 64))
    assert out.logits.shape == (2, 7, 9) and out.image_embeds.shape == (2, 1280)


def test_parameter_count_at_paper_sizes_excludes_clip_text_tower():
    """ViT-B/32 image tower (+projection) and BERT-base: no CLIP text tower, so far below the paper's 283.66 M."""
    with torch.device("meta"):
        teacher = StepCoTTeacher(StepCoTConfig())
        student = StepCoTStudent(StepCoTStudentConfig())
    vision = sum(p.numel() for p in teacher.vision_encoder.parameters())
    text = sum(p.numel() for p in teacher.text_encoder.parameters())
    assert 87e6 < vision < 89e6  # CLIP ViT-B/32 vision tower + 768->512 projection
    assert 108e6 < text < 110e6  # BERT-base without pooler
    heads = sum(p.numel() for p in teacher.parameters()) - vision - text
    assert 10e6 < heads < 30e6  # projection, GAT, fusion, memory GRU and seven 2-layer step MLPs at H=768
    student_heads = sum(p.numel() for p in student.parameters()) - vision
    assert student_heads == 512 * 512 + 512 + 2 * 512 + sum(512 * n + n for n in CLASSES)


@pytest.mark.parametrize("backbone", ["clip", "efficientnet_lite0"])
def test_backbone_forward_features_then_head_is_the_encoder_embedding(backbone):
    """The timm-style split that Grad-CAM differentiates through gives the same embedding as the backbone's own
    forward pass, and the backbone class carries its facts."""
    from modeling_stepcot.backbones_stepcot import VISION_ENCODERS

    if backbone == "efficientnet_lite0":
        model = tiny_student(vision_backbone=backbone, image_size=64)
    else:
        model = tiny_student()
    encoder = model.vision_encoder.eval()
    assert type(encoder) is VISION_ENCODERS[backbone] and encoder.backbone == backbone
    assert len(encoder.image_mean) == len(encoder.image_std) == 3
    pixel_values = torch.randn(2, 3, model.config.image_size, model.config.image_size)
    with torch.no_grad():
        features = encoder.forward_features(pixel_values)
        embedding = encoder.forward_head(features)
        grid = encoder.feature_grid(features)
        if backbone == "clip":
            reference = encoder.model(pixel_values=pixel_values).image_embeds
        else:
            reference = encoder.model.extract_features(pixel_values).mean(dim=(2, 3))
    torch.testing.assert_close(embedding, reference)
    assert embedding.shape == (2, encoder.output_dim)
    assert grid.ndim == 4 and grid.shape[0] == 2 and grid.shape[2] == grid.shape[3] > 1


@pytest.mark.parametrize("factory", [tiny_teacher, tiny_student])
def test_standardized_image_embeds_feed_the_heads_and_survive_a_save(factory, tmp_path):
    model = factory(standardize_image_embeds=True).eval()
    width = model.vision_encoder.output_dim
    train = torch.randn(40, width, dtype=torch.float64) * torch.linspace(1.0, 5.0, width) + 7
    model.set_image_embed_standardization(train)
    standardized = model.head_inputs(train.float())
    assert standardized.mean(0).abs().max() < 1e-4 and (standardized.std(0, unbiased=False) - 1).abs().max() < 1e-3
    embeds = train[:5].float()
    with torch.no_grad():
        out = model(image_embeds=embeds)
        assert torch.equal(out.image_embeds, embeds)  # the raw embedding is reported (the OOD check reads it)
        raw = factory(standardize_image_embeds=False).eval()
        raw.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("image_embed_")})
        assert not torch.allclose(raw(image_embeds=embeds).step_logits[-1], out.step_logits[-1])
        assert torch.allclose(raw(image_embeds=standardized[:5]).step_logits[-1], out.step_logits[-1], atol=1e-5)
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    assert reloaded.config.standardize_image_embeds
    with torch.no_grad():
        assert torch.allclose(reloaded(image_embeds=embeds).step_logits[-1], out.step_logits[-1], atol=1e-6)


def test_standardization_is_off_by_default_and_cannot_be_fitted_then():
    model = tiny_student()
    assert not model.config.standardize_image_embeds and not hasattr(model, "image_embed_mean")
    assert not any(name.startswith("image_embed_") for name in model.state_dict())
    with pytest.raises(ValueError, match="standardize_image_embeds=False"):
        model.set_image_embed_standardization(torch.randn(4, model.vision_encoder.output_dim))
