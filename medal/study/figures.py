"""The paper's qualitative figures from a finished run: t-SNE of features (Fig. 5), Grad-CAM (Fig. 6).

Both rebuild the run's student from best.pt and its data from config.json, preprocess exactly
as training and evaluation did, and write a PNG (plus the numbers behind it as .npz).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medal.cache.store import cache_dir, list_caches
from medal.data.base import Dataset
from medal.data.preprocess import to_device
from medal.pipeline.evaluate import LoadedRun, load_run
from medal.runtime.device import resolve_device
from medal.runtime.errors import MedalError
from medal.runtime.io import atomic
from medal.runtime.log import warn
from medal.runtime.plots import plt, save


def colour_labels(data: Dataset, split: str) -> tuple[np.ndarray, list[str]]:
    """One colour index per sample: its class, or for multi-label data whether any finding is present."""
    labels = data.splits[split].labels
    if data.multi_label:
        return labels.any(1).astype(int), ["no finding", "finding"]
    return labels[:, 0], data.label_names


def penultimate(loaded: LoadedRun, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """The student's pooled features before its classifier (timm's pre_logits)."""
    model = loaded.model
    with torch.inference_mode():
        feats = [model.forward_head(model.forward_features(loaded.prep(images[i : i + batch_size])), pre_logits=True)
                 for i in range(0, len(images), batch_size)]
    return torch.cat(feats).float().cpu().numpy()


def teacher_features(config: dict, caches: Path | None, split: str, index: np.ndarray) -> tuple[np.ndarray, str] | None:
    """The run's teacher CLS features for the chosen samples, from its cache, when that is still there."""
    key = config.get("cache_key")
    if not key:
        return None
    hits = [c for c in list_caches(cache_dir(caches)) if c.key == key]
    if not hits:
        warn(f"teacher cache {key} is not in {cache_dir(caches)}; the t-SNE has no teacher panel (pass --cache-dir).")
        return None
    if hits[0].attrs.get("teacher_kind") == "run":  # a run teacher's cache holds logits, no backbone features
        return None
    return hits[0].features(split)[index].astype(np.float32), hits[0].attrs["teacher"]


def embed(features: np.ndarray) -> np.ndarray:
    from sklearn.manifold import TSNE

    perplexity = min(30.0, max(2.0, (len(features) - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=0).fit_transform(features)


def run_tsne(run: Path, split: str = "test", max_points: int = 2000, out: Path | None = None,
             baseline: Path | None = None, caches: Path | None = None, device: str = "auto",
             max_memory: str | None = None) -> Path:
    """Figure 5: t-SNE of the student's (and teacher's, and a CE baseline's) features, coloured by class."""
    if split not in ("train", "val", "test"):
        raise MedalError(f"--split must be train, val or test, got {split!r}.")
    if max_points < 5:
        raise MedalError(f"--max-points must be at least 5, got {max_points}.")
    dev = resolve_device(device)
    loaded = load_run(run, dev, max_memory=max_memory, caches=caches)  # a streamed split: only the subset is read
    others = load_run(baseline, dev, data=loaded.data) if baseline else None
    n = len(loaded.data.splits[split].labels)
    index = np.sort(np.random.default_rng(0).choice(n, min(n, max_points), replace=False))
    images = to_device(loaded.data.splits[split].images[index], dev)
    panels = {f"student {loaded.config['student']}": penultimate(loaded, images)}
    teacher = teacher_features(loaded.config, caches, split, index)
    if teacher is not None:
        panels[f"teacher {teacher[1]} (CLS)"] = teacher[0]
    if others is not None:
        panels[f"baseline {others.config['student']} (alpha={others.config['alpha']:g})"] = penultimate(others, images)
    colours, names = colour_labels(loaded.data, split)
    colours = colours[index]
    points = {title: embed(feats) for title, feats in panels.items()}

    out = Path(out) if out else Path(run) / f"tsne_{split}.png"
    fig, axes = plt.subplots(1, len(points), figsize=(4.2 * len(points), 4.2), squeeze=False)
    for ax, (title, xy) in zip(axes[0], points.items()):
        scatter = ax.scatter(xy[:, 0], xy[:, 1], c=colours, cmap="tab10" if len(names) <= 10 else "tab20", s=6,
                             vmin=0, vmax=max(len(names) - 1, 1))
        ax.set(title=title, xticks=[], yticks=[])
    handles = [plt.Line2D([], [], marker="o", ls="", color=scatter.cmap(scatter.norm(i))) for i in range(len(names))]
    fig.legend(handles, [name[:28] for name in names], loc="lower center", ncol=min(len(names), 4), fontsize=7,
               bbox_to_anchor=(0.5, -0.02 - 0.05 * ((len(names) - 1) // 4)))
    fig.suptitle(f"t-SNE of {loaded.data.flag} {split} features ({len(index)} samples)")
    save(fig, out)
    arrays = {"index": index, "labels": colours, **{f"xy{i}": xy for i, xy in enumerate(points.values())},
              "titles": np.array(list(points))}
    atomic(out.with_suffix(".npz"), lambda tmp: write_npz(tmp, arrays))
    return out


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:  # a file object, so that numpy does not append .npz to the temporary name
        np.savez(f, **arrays)


def target_layer(model: nn.Module) -> nn.Module:
    """The last feature stage: timm's feature_info when the model has it, else its last conv."""
    info = getattr(model, "feature_info", None)
    if info:
        return model.get_submodule(info[-1]["module"])
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise MedalError(f"{type(model).__name__} has no convolution to take a Grad-CAM from.")
    return convs[-1]


def grad_cam(model: nn.Module, x: torch.Tensor, layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, h, w) maps in [0, 1] for each image's top-scoring output, and the (B, C) logits.

    Grad-CAM: weight the layer's activation channels by their spatially averaged gradient of
    the chosen logit, sum, keep the positive part. In eval mode samples do not interact, so
    one backward pass of the summed logits gives every image its own gradient.
    """
    saved: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        saved["act"] = output
        output.register_hook(lambda grad: saved.__setitem__("grad", grad))

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model(x).float()
            logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
    finally:
        handle.remove()
    act, grad = saved["act"].detach().float(), saved["grad"].float()
    cam = F.relu((grad.mean((2, 3), keepdim=True) * act).sum(1))
    cam = cam / cam.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    return cam, logits.detach()


def label_text(data: Dataset, values: np.ndarray) -> str:
    """Class name, or the present findings for multi-label data."""
    names = data.label_names
    if data.multi_label:
        found = [names[i] for i in np.flatnonzero(values)]
        return ", ".join(found)[:24] or "none"
    return names[int(values[0])][:24]


def run_cam(run: Path, n: int = 8, out: Path | None = None, device: str = "auto", max_memory: str | None = None,
            caches: Path | None = None) -> Path:
    """Figure 6: Grad-CAM of the student's last stage over the first n test images, image beside overlay."""
    if n < 1:
        raise MedalError(f"--n must be at least 1, got {n}.")
    dev = resolve_device(device)
    loaded = load_run(run, dev, max_memory=max_memory, caches=caches)  # a streamed test split: n images read
    test = loaded.data.splits["test"]
    n = min(n, len(test.labels))
    images = to_device(test.images[:n], dev)
    cam, logits = grad_cam(loaded.model, loaded.prep(images), target_layer(loaded.model))
    height, width = test.images.shape[1:3]
    cam = F.interpolate(cam[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0].cpu().numpy()
    if loaded.data.multi_label:
        predicted = (torch.sigmoid(logits) > 0.5).int().cpu().numpy()
    else:
        predicted = logits.argmax(1, keepdim=True).cpu().numpy()

    pairs = 4
    rows = -(-n // pairs)
    fig, axes = plt.subplots(rows, 2 * pairs, figsize=(2 * 2 * pairs, 2.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        ax_img, ax_cam = axes[i // pairs, 2 * (i % pairs)], axes[i // pairs, 2 * (i % pairs) + 1]
        picture = test.images[i].squeeze(-1) if test.images.shape[-1] == 1 else test.images[i]
        ax_img.imshow(picture, cmap="gray" if picture.ndim == 2 else None)
        ax_img.set_title(f"true: {label_text(loaded.data, test.labels[i])}", fontsize=7)
        ax_cam.imshow(picture, cmap="gray" if picture.ndim == 2 else None)
        ax_cam.imshow(cam[i], cmap="jet", alpha=0.45, vmin=0, vmax=1)
        ax_cam.set_title(f"pred: {label_text(loaded.data, predicted[i])}", fontsize=7)
    fig.suptitle(f"Grad-CAM of {loaded.config['student']} on {loaded.data.flag} test images")
    return save(fig, Path(out) if out else Path(run) / "gradcam.png")
