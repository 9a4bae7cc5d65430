"""Teacher weights load from both official torch.hub .pth and timm/HF .safetensors files."""

from __future__ import annotations

import timm
import torch
from safetensors.torch import save_file

from medal.models.teachers import TEACHERS, load_teacher


def test_hub_pth_and_timm_safetensors_give_the_same_teacher(vits_weights, tmp_path):
    official = load_teacher("dinov2_vits14", vits_weights, 28)
    timm_layout = timm.create_model(TEACHERS["dinov2_vits14"], pretrained=False, num_classes=0)
    state = {k: v for k, v in torch.load(vits_weights).items() if k != "mask_token"}
    timm_layout.load_state_dict(state)
    save_file(timm_layout.state_dict(), tmp_path / "model.safetensors")
    from_safetensors = load_teacher("dinov2_vits14", tmp_path / "model.safetensors", 28)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        a, b = official(x), from_safetensors(x)
    assert a.shape == (2, 384) and torch.allclose(a, b, atol=1e-5)
    assert not any(p.requires_grad for p in official.parameters())
    assert official.pos_embed.shape[1] == 1 + 2 * 2, "pos_embed resampled from 37x37 to the 2x2 grid at 28 px"
