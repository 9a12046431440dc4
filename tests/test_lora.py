"""LoRA on the image encoder: only adapters train, the frozen base does not, and the merged export is exact."""

import pytest
import torch
from tiny_models import random_batch, tiny_student, tiny_teacher

from trainers.training.lora import add_vision_lora, merge_vision_lora


@pytest.mark.parametrize("factory", [tiny_teacher, tiny_student])
def test_lora_trains_adapters_only_and_merges_exactly(factory, tmp_path):
    model = factory()
    pixel_values, labels = random_batch(4, missing_fraction=0.0)
    base = {n: p.detach().clone() for n, p in model.vision_encoder.named_parameters()}
    assert not model.vision_encoder_is_trainable()
    count = add_vision_lora(model, r=4)
    assert count > 0 and model.vision_encoder_is_trainable()

    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):
        optimizer.zero_grad()
        model.train()
        model(pixel_values=pixel_values, labels=labels).loss.backward()
        optimizer.step()
    adapters = {n: p for n, p in model.vision_encoder.named_parameters() if "lora_B" in n}
    assert adapters and any(p.abs().sum() > 0 for p in adapters.values())  # B starts at 0: it learned
    for name, parameter in model.vision_encoder.named_parameters():
        if "lora_" not in name:  # base weights untouched (names gain a `.base_layer` inside adapted layers)
            assert torch.equal(parameter, base[name.replace(".base_layer", "")]), name

    model.eval()
    with torch.no_grad():
        adapted = model(pixel_values=pixel_values).logits
    assert merge_vision_lora(model) > 0
    assert not any("lora_" in n for n, _ in model.named_parameters())
    with torch.no_grad():
        assert torch.allclose(model(pixel_values=pixel_values).logits, adapted, atol=1e-5)
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(pixel_values=pixel_values).logits, adapted, atol=1e-5)


def test_lora_on_an_unsupported_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="freeze_encoders False"):
        add_vision_lora(tiny_student(vision_backbone="efficientnet_lite0"), r=4)
