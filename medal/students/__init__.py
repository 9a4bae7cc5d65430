"""Students medal adds to timm's model registry (importing medal registers them)."""

from medal.students import resnet28  # noqa: F401  (registers resnet18_28, resnet50_28, resnet10n_28)
