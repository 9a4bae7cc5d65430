"""What a `--teacher SPEC` names, how that teacher is loaded, and what identifies it in a cache.

A SPEC is one of three kinds:

- ``dinov2``: one of the four DINOv2 names (`dinov2_vitb14`, ...), loaded by `medal.models.load_teacher`;
- ``timm``: any timm image model, by registered name (`resnet18`, `convnext_small`, `vit_large_patch16_224`,
  with or without a pretrained tag) or by an identifier timm resolves (`hf-hub:ORG/NAME`, `local-dir:DIR`),
  with `--weights FILE` (safetensors or a torch checkpoint, tensors only) where the name alone
  brings no weights. Like DINOv2, its pooled features (`num_classes=0`) are cached and a linear head is
  trained on them; its preprocessing (input size, mean/std, interpolation) is its timm pretrained config's,
  unless `--image-size` says otherwise; `--teacher-args KEY=VALUE,...` are creation arguments the config
  does not carry (`init_values=1e-5`). The whole image is resized: no centre crop (MedMNIST images are small
  and centred);
- ``run``: a finished medal run directory. Its student already classifies this dataset: its logits are
  cached directly (no head), computed with exactly the preprocessing the run was trained with.

A cache names its teacher by the SPEC (`teacher`, normalised: a run by its resolved path) and by the
SHA-256 of the weights actually loaded (`weights_sha256`; a run's `best.pt`), so a retrained run or an
edited weights file is a new cache, never a stale hit.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import timm
from torch import nn

from medal.models.teachers import TEACHERS, load_weights, prepare_hub_download
from medal.runtime.errors import MedalError
from medal.runtime.io import file_hash, read_json

KINDS = ("dinov2", "timm", "run")
HUB_PREFIXES = ("hf-hub:", "local-dir:")
RUN_TEACHER_FILES = ("config.json", "best.pt", "metrics.json", "test_scores.npy")
LOCAL_DIR_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # what timm reads from a local-dir: model
TIMM_INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


@dataclass(frozen=True)
class TeacherSpec:
    spec: str  # as given
    kind: str  # one of KINDS
    name: str  # normalised: the DINOv2 or timm name as given, a run directory's resolved path

    @property
    def label(self) -> str:
        """Filename-safe: what cache keys and run names call this teacher."""
        return teacher_label(self.name)


def is_path_spec(name: str) -> bool:
    return not name.startswith(HUB_PREFIXES) and ("/" in name or os.sep in name)


def teacher_label(name: str) -> str:
    """A teacher's short, filename-safe name: a run directory's base name; hf-hub:ORG/NAME -> hf-hub-ORG-NAME."""
    name = str(name)
    if name.startswith("local-dir:"):
        name = "local-dir-" + Path(name.removeprefix("local-dir:")).name
    elif is_path_spec(name):
        name = Path(name).name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "teacher"


def parse_teacher(spec: str) -> TeacherSpec:
    """Which kind of teacher SPEC names; a MedalError for a name that is none of them. Loads nothing."""
    spec = str(spec).strip()
    if spec in TEACHERS:
        return TeacherSpec(spec, "dinov2", spec)
    if spec.startswith(HUB_PREFIXES):
        return TeacherSpec(spec, "timm", spec)
    path = Path(spec).expanduser()
    if path.is_dir() or is_path_spec(spec) or partial_folder(path).exists():
        return TeacherSpec(spec, "run", str(path.resolve()))
    if spec and timm.is_model(spec):
        return TeacherSpec(spec, "timm", spec)
    raise MedalError(f"unknown teacher {spec!r}: pass a DINOv2 name ({', '.join(TEACHERS)}), a timm model name "
                     f"(resnet18, convnext_small, ...) or identifier (hf-hub:ORG/NAME, local-dir:DIR), "
                     f"or a finished medal run directory.")


def parse_teacher_args(text: str | None) -> dict:
    """--teacher-args 'init_values=1e-5,dynamic_img_size=True' -> {'init_values': 1e-05, 'dynamic_img_size': True}."""
    args: dict = {}
    for part in (p.strip() for p in (text or "").split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise MedalError(f"--teacher-args takes KEY=VALUE pairs separated by commas (init_values=1e-5), got {part!r}.")
        try:
            args[key] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            args[key] = value.strip()  # a bare word is a string
    return args


def format_teacher_args(args: dict) -> str:
    """The normalised form recorded in a cache (and hashed into its key): sorted KEY=VALUE, comma-separated."""
    return ",".join(f"{k}={args[k]!r}" for k in sorted(args))


def check_options(spec: TeacherSpec, weights: Path | None, image_size: int | None, args: dict) -> None:
    """Options that do not apply to a kind of teacher, refused in one line."""
    if args and spec.kind != "timm":
        raise MedalError(f"--teacher-args applies to timm teachers, not to {spec.spec!r}.")
    if spec.kind == "run" and weights is not None:
        raise MedalError(f"a run teacher's weights are its best.pt; drop --weights for {spec.spec}.")
    if weights is not None and not Path(weights).is_file():
        raise MedalError(f"weights file {weights} does not exist.")
    if image_size is not None and image_size < 1:
        raise MedalError(f"--image-size must be a positive number of pixels, got {image_size}.")


def key_weights_id(weights_id: str, teacher_args: str) -> str:
    """What a cache key's hash part is computed from: the weights, and the creation arguments when any."""
    if not teacher_args:
        return weights_id
    return hashlib.sha256(f"{weights_id}|{teacher_args}".encode()).hexdigest()


# --- timm teachers ---------------------------------------------------------------------------------------------


def load_timm_teacher(spec: TeacherSpec, weights: Path | None, image_size: int | None, args: dict) -> nn.Module:
    """A frozen timm backbone whose forward returns its pooled feature (B, D): `num_classes=0`.

    Built at `image_size` where the model takes an `img_size` (ViTs), else at its own; loaded from
    `weights` (`read_state_dict`) through the model's own checkpoint filter (its classifier dropped),
    strictly, or downloaded by timm when no file is given.
    """
    pretrained = weights is None
    if pretrained:
        _check_timm_reads_weights_only()
    if pretrained or spec.name.startswith("hf-hub:"):  # an hf-hub: model reads its config from the hub in any case
        prepare_hub_download()

    def create(size: int | None) -> nn.Module:
        extra = {"img_size": size} if size else {}
        return timm.create_model(spec.name, pretrained=pretrained, num_classes=0, **args, **extra)

    try:
        try:
            model = create(image_size)
        except TypeError as exc:
            if image_size is None or "img_size" not in str(exc):
                raise
            model = create(None)  # a CNN: any input size, no img_size argument
    except TypeError as exc:
        raise MedalError(f"teacher {spec.name} does not take these creation arguments "
                         f"({_first_line(exc)}); check --teacher-args.") from None
    except Exception as exc:  # hub errors, missing files, a config timm cannot build
        if pretrained and isinstance(exc, OSError):
            raise MedalError(f"timm weights for {spec.name} could not be downloaded ({type(exc).__name__}); pass "
                             f"--weights FILE (the model's .safetensors or a torch checkpoint).") from None
        raise MedalError(f"teacher {spec.name} could not be created ({type(exc).__name__}: {_first_line(exc)}).") from None
    if pretrained and not _has_pretrained_source(model):
        raise MedalError(f"timm has no pretrained weights for {spec.name}; pass --weights FILE.")
    if weights is not None:
        load_weights(model, spec.name, Path(weights), filter_fn=_checkpoint_filter(model))
    model.eval().requires_grad_(False)
    return model


SAFE_TIMM = (1, 0, 26)  # from this version on, timm's hub and local-dir: readers unpickle with weights_only=True


def _check_timm_reads_weights_only() -> None:
    """Weights that timm reads itself must not run code: an older timm (installed despite pyproject) is refused."""
    parts = re.findall(r"\d+", timm.__version__)[:3]
    if tuple(map(int, parts)) < SAFE_TIMM:
        raise MedalError(f"timm {timm.__version__} would unpickle the teacher's weights with no restriction (any code "
                         f"in them would run); upgrade it: pip install 'timm>={'.'.join(map(str, SAFE_TIMM))}'.")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160].rstrip(".")


def _has_pretrained_source(model: nn.Module) -> bool:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return bool(cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("file") or cfg.get("state_dict"))


def _checkpoint_filter(model: nn.Module):
    """The model module's own checkpoint filter (e.g. ViT's pos_embed resampling) when it has one; then the
    classifier's keys dropped (the backbone is built with num_classes=0, a checkpoint usually has a head)."""
    module_filter = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    heads = tuple(f"{c}." for c in ((classifier,) if isinstance(classifier, str) else classifier))

    def apply(state: dict, model: nn.Module) -> dict:
        if module_filter is not None:
            try:
                state = module_filter(state, model)
            except Exception as exc:  # a checkpoint of another layout: load_weights turns this into one line
                raise ValueError(f"{type(exc).__name__} in the model's checkpoint filter: {_first_line(exc)}") from None
        own = model.state_dict()
        return {k: v for k, v in state.items() if k in own or not (heads and k.startswith(heads))}

    return apply


def timm_output_dim(model: nn.Module) -> int:
    """Width of the pooled feature a num_classes=0 timm model returns."""
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def input_channels(model: nn.Module) -> int:
    return int(next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels)


def timm_preprocessing(model: nn.Module, image_size: int | None) -> dict:
    """Input size, mean/std and interpolation from the model's timm pretrained config; --image-size wins."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    interpolation = cfg.get("interpolation") if cfg.get("interpolation") in TIMM_INTERPOLATIONS else "bilinear"
    return {"image_size": int(image_size or cfg["input_size"][-1]), "mean": [float(x) for x in cfg["mean"]],
            "std": [float(x) for x in cfg["std"]], "interpolation": interpolation, "in_chans": input_channels(model)}


def timm_weights_id(spec: TeacherSpec, weights: Path | None, model: nn.Module | None = None) -> str:
    """The SHA-256 of the weights file, a local-dir model's own file, or else timm's hub tag (like DINOv2's)."""
    if weights is not None:
        return file_hash(Path(weights), "sha256")
    if spec.name.startswith("local-dir:"):
        folder = Path(spec.name.removeprefix("local-dir:"))
        for name in LOCAL_DIR_WEIGHTS:
            if (folder / name).is_file():
                return file_hash(folder / name, "sha256")
    cfg = (getattr(model, "pretrained_cfg", None) or {}) if model is not None else {}
    if spec.name.startswith("hf-hub:"):
        return f"timm:{spec.name}"
    tag = f"{cfg.get('architecture') or spec.name}.{cfg['tag']}" if cfg.get("tag") else spec.name
    return f"timm:{tag}"


def model_license(model: nn.Module, spec: TeacherSpec) -> tuple[str | None, str]:
    """(licence, where it was read) from a timm model's pretrained config; (None, why) when it states none."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    what = cfg.get("hf_hub_id") or ".".join(x for x in (cfg.get("architecture"), cfg.get("tag")) if x) or spec.name
    if cfg.get("license"):
        return str(cfg["license"]), f"from the timm pretrained config of {what}"
    return None, f"not stated in the timm pretrained config of {what}"


# --- run teachers ----------------------------------------------------------------------------------------------


def partial_folder(run: Path) -> Path:
    return Path(run).with_name(f".{Path(run).name}.partial")


def finished_run(run: Path) -> Path:
    """A run directory `medal distill` finished (config.json, best.pt, metrics.json, test_scores.npy), or one line."""
    run = Path(run)
    if run.name.endswith(".partial") or (not run.exists() and partial_folder(run).exists()):
        raise MedalError(f"run {run} did not finish (only its partial folder exists); let `medal distill` complete "
                         f"before using it as a teacher.")
    if not run.is_dir():
        raise MedalError(f"teacher run directory {run} does not exist.")
    missing = [name for name in RUN_TEACHER_FILES if not (run / name).is_file()]
    if missing:
        raise MedalError(f"{run} is not a finished medal run (no {', '.join(missing)}); a run teacher must be a "
                         f"run `medal distill` completed.")
    return run


def run_config(run: Path) -> dict:
    config = read_json(Path(run) / "config.json")
    if not isinstance(config, dict) or not {"dataset", "student", "data_fingerprint", "image_size"} <= set(config):
        raise MedalError(f"{Path(run) / 'config.json'} is not a medal run's config.")
    return config


def check_run_data(run: Path, config: dict, data) -> None:
    """A run teacher must classify exactly the data it teaches: same dataset, same images and labels."""
    if config["dataset"] != data.flag:
        raise MedalError(f"run {run} was trained on {config['dataset']}, not {data.flag}: a run teacher must be a "
                         f"classifier for the dataset it teaches.")
    if config["data_fingerprint"] != data.fingerprint:
        raise MedalError(f"run {run} was trained on other {data.flag} data or labels than {data.path} (fingerprint "
                         f"{config['data_fingerprint'][:12]} != {data.fingerprint[:12]}); a run teacher must be trained "
                         f"on the data it teaches.")


def run_license(config: dict) -> tuple[str | None, str]:
    """A run teacher inherits its data's licence, and the licences of its own teachers where their caches say."""
    from medal.cache.store import cache_attrs
    from medal.data.facts import dataset_facts

    try:
        parts = [dataset_facts(config).license]
    except Exception:  # an imported dataset moved away: the licence cannot be read
        parts = []
    if float(config.get("alpha", 1)) < 1:
        for key in config.get("cache_keys") or []:
            attrs = cache_attrs(config, key) or {}
            if attrs.get("license"):
                parts.append(f"{attrs['license']} (its teacher {teacher_label(attrs.get('teacher', '?'))})")
    if not parts:
        return None, f"not stated: the run's {config['dataset']} data could not be described"
    return "; ".join(parts), (f"inherited from the run's {config['dataset']} training data"
                              + (" and its own teachers" if len(parts) > 1 else ""))


# --- selecting a cache -----------------------------------------------------------------------------------------


def cache_matcher(spec_text: str):
    """A predicate on cache attrs: was this cache built from SPEC? A run SPEC matches the caches of its current
    best.pt (by SHA-256, wherever the run was when it was cached), never one of an earlier best.pt."""
    spec = parse_teacher(spec_text)
    if spec.kind != "run":
        return lambda attrs: attrs.get("teacher") == spec.name
    sha = file_hash(finished_run(Path(spec.name)) / "best.pt", "sha256")
    return lambda attrs: attrs.get("teacher_kind") == "run" and attrs.get("weights_sha256") == sha


def stale_run_cache(spec_text: str, caches: list) -> str | None:
    """When SPEC is a run whose directory was cached, but from another best.pt: the sentence that says so."""
    spec = parse_teacher(spec_text)
    if spec.kind != "run" or not any(c.attrs.get("teacher") == spec.name for c in caches):
        return None
    return (f"the teacher cache of run {spec.name} was computed from an earlier best.pt (the run was retrained since); "
            f"run `medal cache-teacher --dataset DATASET --teacher {spec.name}` again")
