"""MODEL_CARD.md in every finished run: Hugging Face's model-card layout (YAML front matter, then prose).

Written by `medal distill` once the run's metrics exist (and refreshed by `medal evaluate`). The
teacher's provenance comes from its cache when the cache is still there; the card says so when
it is not.
"""

from __future__ import annotations

import json
from pathlib import Path

from medal.cache.store import cache_attrs
from medal.data.facts import DatasetFacts, dataset_facts
from medal.models.teacher_spec import teacher_label
from medal.runtime.io import atomic, read_json


def hf_license(text: str) -> str:
    """A dataset's licence as the Hub spells it: "CC BY-NC 4.0" -> "cc-by-nc-4.0"."""
    return text.strip().lower().replace(" ", "-")


def front_matter(config: dict, metrics: dict, facts: DatasetFacts, title: str) -> str:
    q = json.dumps  # a JSON string is a valid YAML scalar
    results = "\n".join(f"    - {{type: {kind}, value: {metrics['test'][key]:.4f}, name: {q('test ' + key.upper())}}}"
                        for key, kind in (("auc", "roc_auc"), ("acc", "accuracy")))
    return f"""---
license: {hf_license(facts.license)}
library_name: timm
pipeline_tag: image-classification
tags:
- image-classification
- medical-imaging
- knowledge-distillation
- medmnist
- {facts.name}
- {config['student']}
datasets:
- {facts.name}
metrics:
- roc_auc
- accuracy
model-index:
- name: {q(title)}
  results:
  - task: {{type: image-classification}}
    dataset: {{name: {q(f"{facts.name} ({config['size']} px)")}, type: {facts.name}, split: test}}
    metrics:
{results}
---
"""


KIND_WORDS = {"dinov2": "DINOv2 backbone + linear head", "timm": "timm backbone + linear head",
              "run": "a finished medal run's student"}
DERIVATIVE_WARNING = ("models trained on a teacher's outputs may count as derivatives under its licence; check it "
                      "before distributing this student")


def teacher_section(config: dict) -> str:
    keys = config.get("cache_keys") or ([config["cache_key"]] if config.get("cache_key") else [])
    if config["alpha"] == 1 or not keys:
        return "No teacher: this is the plain cross-entropy baseline (`--alpha 1`).\n"
    rows = ["| teacher | kind | cache key | weights SHA-256 | licence | data fingerprint | teacher test AUC |",
            "|---|---|---|---|---|---|---|"]
    licences = []
    for key, name in zip(keys, config.get("teachers") or [config.get("teacher")] * len(keys)):
        attrs = cache_attrs(config, key)
        if attrs is None:
            rows.append(f"| {name} | | `{key}` | (cache no longer available) | | `{config['data_fingerprint']}` (the run's) | |")
            licences.append(f"- **Teacher licence** ({name}): unknown, its cache is gone; {DERIVATIVE_WARNING}.")
            continue
        auc = attrs.get("head_metrics", {}).get("test", {}).get("auc")
        kind = KIND_WORDS.get(attrs.get("teacher_kind", "dinov2"), "")
        licence = attrs.get("license")
        rows.append(f"| {attrs['teacher']} | {kind} | `{key}` | `{attrs['weights_sha256']}` | {licence or 'not stated'} | "
                    f"`{attrs['data_fingerprint']}` | {'' if auc is None else f'{auc:.4f}'} |")
        source = attrs.get("license_source")
        licences.append(f"- **Teacher licence** ({attrs['teacher']}): "
                        + (f"{licence}{f' ({source})' if source else ''} - {DERIVATIVE_WARNING}." if licence else
                           f"not stated ({source or 'no licence recorded'}); find the teacher's terms - {DERIVATIVE_WARNING}."))
    several = ""
    if len(keys) > 1:
        several = (" (the mean of the teachers' softened probabilities)" if config.get("teacher_weighting") == "mean"
                   else " (CA-MKD: confidence-weighted over the teachers)")
    return (f"Distilled from frozen teacher logits cached once per dataset{several}, their raw logits softened at "
            f"temperature t.\n\n" + "\n".join(rows) + "\n\n" + "\n".join(licences) + "\n")


def data_section(config: dict, facts: DatasetFacts) -> str:
    """Where the training data came from, and for an imported dataset the repeated images its import found."""
    if not facts.imported:
        origin = (f"{facts.name}, MedMNIST v2, {config['size']} px file, official train split (validation split for "
                  f"model selection). File MD5\n`{config['data_md5']}`")
    else:
        origin = (f"{facts.name}, {facts.description}, {config['size']} px, its train split (val split for model "
                  f"selection)")
    return (f"{origin}; fingerprint of all splits' images and labels (SHA-256) `{config['data_fingerprint']}`.\n"
            f"Licence: {facts.license}.\n" + duplicates_note(facts))


def duplicates_note(facts: DatasetFacts) -> str:
    """The import's count of repeated images (none for MedMNIST, or an import older than the count)."""
    d = facts.duplicates
    if d is None:
        return ""
    within, across, dropped = d["within_splits"], d["across_splits"], facts.duplicates_dropped
    if not within and not across:
        return "\n**Duplicates**: none; no image's decoded pixels repeat another's (compared at import).\n"
    text = (f"\n**Duplicates** (decoded pixels compared at import): {across} across splits (val/test images "
            f"repeating an image of another split), {within} within splits (images repeating an earlier one of the "
            f"same split).")
    if dropped:
        text += f" {dropped} of the former, the val/test copies of training images, were dropped at import (`--drop-duplicates`)."
    if across - dropped:
        text += f" Still in val/test: {across - dropped}, inflating the metrics below."
    return text + "\n"


def leakage_limitation(facts: DatasetFacts) -> str:
    """A Limitations bullet when val/test images that repeat another split's were kept."""
    left = (facts.duplicates or {}).get("across_splits", 0) - facts.duplicates_dropped
    if left <= 0:
        return ""
    return (f"- **Leakage**: val/test images repeating an image of another split remain ({left}, see Data); the "
            f"test metrics above are inflated by them. `medal import-dataset --drop-duplicates` leaves out the copies "
            f"of training images.\n")


def render(config: dict, metrics: dict, run_name: str) -> str:
    facts = dataset_facts(config)
    teachers = ", ".join(teacher_label(name) for name in config.get("teachers") or []) or "no teacher"
    title = f"{config['student']} student for {facts.name}" + (f", distilled from {teachers}" if config["alpha"] < 1 else "")
    m, size, image_size = metrics, config["size"], config["image_size"]
    in_chans = config.get("in_chans", 3)
    kept = f"epoch {m['kept_epoch']} ({m.get('kept', 'best')} val AUC)" if "kept_epoch" in m else "best val AUC"
    if m.get("kept") == "last":
        kept = f"epoch {m['kept_epoch']} (the last)"
    labels = ", ".join(f"{i}: {name}" for i, name in enumerate(facts.label_names))
    dinov2 = all(str(name).startswith("dinov2_") for name in config.get("teachers") or [])
    how = ("on the labels alone (the cross-entropy baseline, no teacher)" if config["alpha"] == 1 else
           "by knowledge distillation from a frozen DINOv2 teacher (the MedAlmighty recipe, Ren et al. 2025)" if dinov2
           else "by knowledge distillation from frozen teacher logits (the MedAlmighty recipe, Ren et al. 2025)")
    milestones = ", ".join(map(str, config.get("milestones", []))) or "none"
    return front_matter(config, metrics, facts, title) + f"""
# {title}

A {config['student']} image classifier for {facts.name} ({facts.task}, {len(facts.label_names)} outputs), trained
with medal {how}. Run: `{run_name}`.

## Model details

- **Architecture**: timm `{config['student']}`, {in_chans} input channel(s), {len(facts.label_names)} outputs
  ({'a sigmoid per label' if facts.task.startswith('multi-label') else 'softmax over classes'}).
- **Labels** (output order): {labels}.
- **Input**: {facts.name} images at their native {size}x{size} px and {facts.channels} channel(s), then
  {'grayscale repeated to 3 channels, ' if facts.channels < in_chans else ''}bilinear-resized to {image_size}x{image_size}
  and normalised with mean 0.5 / std 0.5 per channel. `medal predict` and every `medal export` do this for you.
- **Software**: medal {config.get('medal_version', '?')}, torch {config.get('torch_version', '?')}.

## Training

### Teacher
{teacher_section(config)}
### Distillation

| t | alpha (CE weight) | epochs | batch | lr (Adam) | lr x0.1 at | seed | weights kept |
|---|---|---|---|---|---|---|---|
| {config['t']:g} | {config['alpha']:g} | {config['epochs']} | {config['batch_size']} | {config['lr']:g} | {milestones} | {config['seed']} | {kept} |

The loss is alpha * CE(labels) + (1 - alpha) * t^2 * KL(teacher_t || student_t).

### Data

{data_section(config, facts)}
## Evaluation

MedMNIST's official metrics (`medmnist.evaluator.getAUC` / `getACC`) on the official splits; the test
probabilities are in `test_scores.npy`.

| split | AUC | ACC |
|---|---|---|
| test | {m['test']['auc']:.4f} | {m['test']['acc']:.4f} |
| val | {m['val']['auc']:.4f} | {m['val']['acc']:.4f} |

## Training curve

![training loss and validation AUC/ACC per epoch](history.png)

## Intended use

Research and teaching: benchmarking knowledge distillation and small models on MedMNIST, and as a starting point
for further experiments on {facts.name}-like images.

## Limitations

- **Research use only. Not a medical device**: not validated for diagnosis, screening, triage or any clinical
  decision, and must not be used for them.
- Trained and tested on {size}x{size} px MedMNIST images of one public dataset: its sources, scanners, sites and
  patient population. Expect lower and unmeasured accuracy on other images; the dataset's biases (class balance,
  demographics, acquisition) are the model's.
- Images of another size or colour mode are converted to the dataset's ({size} px, {facts.channels} channel(s)); that
  conversion is not what the training images went through at their source.
- Metrics above are on one split with one seed; they carry sampling noise.
{leakage_limitation(facts)}- Data licence: {facts.license} (MedMNIST v2, Yang et al., Scientific Data 2023, and the source dataset's authors);
  {'non-commercial use only, and ' if 'NC' in facts.license else ''}cite them when you use this model.

## How to use

```bash
medal predict {run_name} scan.png more_images/ --out predictions.csv   # probabilities per class, predicted label
medal export {run_name} --format onnx --out student.onnx                 # or torchscript, or safetensors --out DIR
```
"""


def write_model_card(run: Path) -> Path:
    """Write RUN/MODEL_CARD.md from its config.json and metrics.json."""
    run = Path(run)
    config, metrics = read_json(run / "config.json"), read_json(run / "metrics.json")
    name = run.name.removeprefix(".").removesuffix(".partial")  # distill writes it before the rename
    where = str(config.get("out") or Path(config.get("runs_dir") or "runs") / name)
    return atomic(run / "MODEL_CARD.md", lambda tmp: tmp.write_text(render(config, metrics, where)))
