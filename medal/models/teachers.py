"""The frozen DINOv2 teachers, built from timm.

Teachers are named as in DINOv2's torch.hub (`dinov2_vitb14`) and built from timm's
`vit_*_patch14_dinov2` definitions, whose checkpoint filter accepts the official hub `.pth`
(it drops `mask_token`, resamples `pos_embed` to our image size) as well as timm/HF
`.safetensors`.
"""

from __future__ import annotations

import socket
from pathlib import Path

import timm
import torch
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import nn

from medal.runtime.errors import MedalError
from medal.runtime.io import file_hash, read_torch, write_torch
from medal.runtime.progress import interactive

TEACHERS = {
    "dinov2_vits14": "vit_small_patch14_dinov2",
    "dinov2_vitb14": "vit_base_patch14_dinov2",
    "dinov2_vitl14": "vit_large_patch14_dinov2",
    "dinov2_vitg14": "vit_giant_patch14_dinov2",
}
DEFAULT_TEACHER = "dinov2_vitb14"
PATCH = 14
HUB_URL = "https://dl.fbaipublicfiles.com/dinov2/{name}/{name}_pretrain.pth"
STATE_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")  # where timm's reader looks, in this order


def check_teacher(name: str) -> str:
    if name not in TEACHERS:
        raise MedalError(f"unknown teacher {name!r}: choose one of {', '.join(TEACHERS)}.")
    return name


def check_teacher_image_size(image_size: int) -> None:
    if image_size < PATCH or image_size % PATCH:
        raise MedalError(f"--image-size must be a multiple of the teacher's patch size {PATCH} (e.g. 224), got {image_size}.")


def weights_id(teacher: str, weights: Path | None) -> str:
    """What identifies the teacher's weights in a cache key: the file's SHA-256, or the hub tag."""
    return file_hash(weights, "sha256") if weights is not None else f"timm:{TEACHERS[teacher]}.lvd142m"


def load_teacher(teacher: str, weights: Path | None, image_size: int) -> nn.Module:
    """A frozen DINOv2 backbone whose forward returns the CLS feature (B, D)."""
    check_teacher(teacher)
    check_teacher_image_size(image_size)
    arch = TEACHERS[teacher]
    kwargs = dict(num_classes=0, img_size=image_size)
    if weights is not None:
        model = timm.create_model(arch, pretrained=False, **kwargs)
        load_weights(model, teacher, Path(weights))
    else:
        prepare_hub_download()
        try:
            model = timm.create_model(arch, pretrained=True, **kwargs)
        except Exception as exc:
            raise MedalError(
                f"DINOv2 weights for {teacher} could not be downloaded ({type(exc).__name__}); pass --weights FILE, "
                f"e.g. {HUB_URL.format(name=teacher)} or timm's {arch}.lvd142m model.safetensors."
            ) from None
    model.eval().requires_grad_(False)
    return model


def prepare_hub_download() -> None:
    """Before timm downloads weights: no bar frames in a log file, and offline at once when the hub is unreachable."""
    if not interactive():
        import huggingface_hub.utils

        huggingface_hub.utils.disable_progress_bars()  # a download bar's frames would fill a log file
    if not _reachable("huggingface.co"):
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True  # use a cached download, or fail at once, not after retries


def read_state_dict(weights: Path) -> dict:
    """A weights file's state dict where timm's reader finds it (EMA weights first, DDP prefixes dropped), but
    read as safetensors or tensors only: timm's reader unpickles anything on torch 2.4, and so a crafted
    file's code would run."""
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            checkpoint = load_file(str(weights), device="cpu")
        except Exception as exc:  # a damaged header: safetensors' own error types
            raise MedalError(f"weights {weights} could not be read as safetensors ({type(exc).__name__}).") from None
    else:
        checkpoint = read_torch(weights)
    if isinstance(checkpoint, dict):
        key = next((k for k in STATE_KEYS if checkpoint.get(k) is not None), None)
        checkpoint = checkpoint[key] if key else checkpoint
    if not isinstance(checkpoint, dict):
        raise MedalError(f"weights {weights} hold no state dict ({type(checkpoint).__name__}).")
    return timm.models.clean_state_dict(checkpoint)


def load_weights(model: nn.Module, teacher: str, weights: Path, filter_fn=checkpoint_filter_fn) -> None:
    """Load a local checkpoint (`read_state_dict`) through a checkpoint filter (DINOv2's by default), strictly,
    or say why not."""
    if not weights.is_file():
        raise MedalError(f"weights file {weights} does not exist.")
    state = read_state_dict(weights)
    try:
        model.load_state_dict(filter_fn(state, model), strict=True)
    except (RuntimeError, KeyError, ValueError) as exc:  # missing, unexpected or mis-shaped keys
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else type(exc).__name__)
        raise MedalError(f"weights {weights} do not fit {teacher} ({detail[:160].rstrip('.')}).") from None


def _reachable(host: str) -> bool:
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


def feature_dim(model: nn.Module) -> int:
    return int(model.num_features)


def save_random_teacher(teacher: str, path: Path, seed: int = 0) -> Path:
    """Write a randomly initialised teacher in the official hub layout (tests and offline demos)."""
    torch.manual_seed(seed)
    model = timm.create_model(TEACHERS[check_teacher(teacher)], pretrained=False, num_classes=0)
    state = model.state_dict()
    for name, value in state.items():
        if name.endswith(("ls1.gamma", "ls2.gamma")):
            value.fill_(1.0)  # DINOv2's 1e-5 LayerScale init would make every image's CLS feature the same
    state["mask_token"] = torch.zeros(1, model.embed_dim)  # present in every official DINOv2 checkpoint
    return write_torch(Path(path), state)
