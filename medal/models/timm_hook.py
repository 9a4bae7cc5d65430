"""Registers medal's (28) ResNets with timm whenever timm is imported, without importing timm first.

`import medal` stays light (no torch, no timm), yet the README's promise holds:
`import medal, timm; timm.create_model("resnet50_28")` works. `register_with_timm()` imports
`medal.models.resnet28` at once when timm is already loaded; otherwise it puts a one-shot finder on
`sys.meta_path` that, when `import timm` starts, takes itself off the path (so it can neither recurse
nor touch a later import), lets the usual finders find timm, and imports `medal.models.resnet28`
right after timm's own code has run. Code that builds medal's students imports resnet28 itself
(medal/models/students.py) and does not rely on this hook.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings
from types import ModuleType

REGISTRY = "medal.models.resnet28"


def _register() -> None:
    """Import resnet28 (its @register_model lines register it); never let a failure break `import timm`."""
    try:
        importlib.import_module(REGISTRY)
    except Exception as exc:  # medal.models.students imports it again and raises the real error there
        warnings.warn(f"medal could not register its (28) ResNets with timm: {exc}", stacklevel=2)


class _RegisterAfterTimm:
    """A meta path finder (plain class: importlib.abc costs an import) that finds nothing itself: it wraps the
    spec the other finders return for `timm` so that resnet28 follows it."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "timm":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)  # one shot: the search below, and every later import, go on without us
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_timm = spec.loader.exec_module

        def exec_then_register(module: ModuleType) -> None:
            exec_timm(module)
            _register()

        spec.loader.exec_module = exec_then_register  # this spec's own loader instance: other modules are untouched
        return spec


def register_with_timm() -> None:
    """Register the (28) ResNets now if timm is loaded, else as soon as it is imported."""
    if "timm" in sys.modules:
        _register()
    elif not any(isinstance(f, _RegisterAfterTimm) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterTimm())
