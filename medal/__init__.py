"""medal: DINOv2 -> ResNet50 distillation for MedMNIST, with the teacher paid for once.

Importing medal loads neither torch nor timm, so that `medal --help` answers at once: `kd_loss`
is imported on first use, and medal's (28) ResNets are registered with timm when timm is
imported (medal/models/timm_hook.py).
"""

from medal.models.timm_hook import register_with_timm
from medal.runtime.version import __version__

__all__ = ["kd_loss", "__version__"]

register_with_timm()


def __getattr__(name: str):
    """`from medal import kd_loss` without importing torch at `import medal`."""
    if name == "kd_loss":
        from medal.losses.kd_loss import kd_loss

        return kd_loss
    raise AttributeError(f"module 'medal' has no attribute {name!r}")
