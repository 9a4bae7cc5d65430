"""medal: DINOv2 -> ResNet50 distillation for MedMNIST, with the teacher paid for once."""

from medal.kd_loss import kd_loss
from medal import students  # noqa: F401  (registers resnet18_28 and resnet50_28 with timm)

__version__ = "0.1.0"
__all__ = ["kd_loss", "__version__"]
