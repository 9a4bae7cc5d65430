"""medal: DINOv2 -> ResNet50 distillation for MedMNIST, with the teacher paid for once."""

import medal.models.resnet28  # noqa: F401,E402  (registers resnet18_28, resnet50_28, resnet10n_28 with timm)
from medal.losses.kd_loss import kd_loss

__version__ = "0.1.0"
__all__ = ["kd_loss", "__version__"]
