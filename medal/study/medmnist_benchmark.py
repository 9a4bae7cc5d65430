"""MedMNIST v2's official ResNet-18/50 benchmark beside our CE runs of the same model and resolution.

MedMNIST v2 (Yang et al., Scientific Data 2023) reports four CNNs trained from scratch with plain
cross-entropy: a CIFAR-style ResNet-18/50 on the native 28 px images ("(28)", medal's
`resnet18_28`/`resnet50_28`) and torchvision's ResNet-18/50 on images upsampled to 224 px ("(224)",
timm's `resnet18`/`resnet50`, the same architectures). Our CE runs (`--alpha 1`) of those students
are grouped by everything that changes the result: dataset, student, image size and recipe. Every
group gets a row; the published numbers and the difference stand beside it only where the student
and image size are the published model's, and the row names any ingredient of its recipe that is
not the published one, so runs of another recipe are never averaged into, or passed off as, a
reproduction.

The published recipe is what MedMNIST's maintainers say produced the numbers (MedMNIST/experiments
issues #5, #7, #8, #12 and MedMNIST/MedMNIST #60): Adam lr 1e-3, batch 128, 100 epochs, x0.1 at
epochs 50 and 75, grayscale converted to 3 channels (`--as_rgb`), the weights with the best
validation AUC, and for "(224)" images upsampled by PIL's NEAREST (the experiments README).
"""

from __future__ import annotations

from medal.data.medmnist import DATASETS
from medal.study.runs import METRICS, Run, opt, pm, read_paper, stats

CSV = "medmnist_v2_official_benchmark.csv"
# (student, image size) -> the published row it reproduces
MODELS = {("resnet18_28", 28): "ResNet-18 (28)", ("resnet50_28", 28): "ResNet-50 (28)",
          ("resnet18", 224): "ResNet-18 (224)", ("resnet50", 224): "ResNet-50 (224)"}
STUDENTS = {student for student, _ in MODELS}
# the published recipe, in the terms of a run's config.json (interpolation only matters when resizing)
PUBLISHED = {"keep": "best", "in_chans": 3, "epochs": 100, "milestones": (50, 75), "batch_size": 128, "lr": 1e-3,
             "pretrained": False, "patience": 0, "size": 28, "interpolation": "nearest"}
WHAT = {"keep": "the {} epoch's weights (published: best val AUC)", "in_chans": "{} input channel(s) (published: 3)",
        "epochs": "{} epochs (published: 100)", "milestones": "lr milestones {} (published: 50,75)",
        "batch_size": "batch {} (published: 128)", "lr": "lr {} (published: 0.001)",
        "pretrained": "ImageNet-pretrained (published: from scratch)", "patience": "early stop after {} epochs",
        "size": "the {} px MedMNIST file (published: 28)",
        "interpolation": "{} upsampling (published: PIL nearest)"}


def recipe_of(config: dict) -> dict:
    """The ingredients of a run's recipe that MedMNIST's published one fixes (older configs: their defaults)."""
    recipe = {"keep": config.get("keep", "best"), "in_chans": int(config.get("in_chans", 3)),
              "epochs": int(config["epochs"]), "milestones": tuple(config.get("milestones", (50, 75))),
              "batch_size": int(config.get("batch_size", 128)), "lr": float(config.get("lr", 1e-3)),
              "pretrained": bool(config.get("pretrained", False)), "patience": int(config.get("patience", 0)),
              "size": int(config.get("size", 28))}
    if int(config["image_size"]) != recipe["size"]:  # only a resized image has an interpolation
        recipe["interpolation"] = config.get("interpolation", "bilinear")
    return recipe


def differences(recipe: dict) -> list[str]:
    """What of `recipe` is not the published recipe, in words."""
    out = []
    for key, value in recipe.items():
        if value != PUBLISHED[key]:
            shown = ",".join(map(str, value)) if key == "milestones" else f"{value:g}" if key == "lr" else value
            out.append(WHAT[key].format(shown))
    return out


def medmnist_rows(runs: list[Run]) -> list[dict]:
    """One row per (dataset, student, image size, recipe) of CE runs of the four published students."""
    published = {(r["method"], r["dataset"]): r for r in read_paper(CSV)}
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        c = run.config
        if float(c["alpha"]) == 1 and c["student"] in STUDENTS:
            recipe = recipe_of(c)
            groups.setdefault((c["dataset"], c["student"], int(c["image_size"]), tuple(recipe.items())), []).append(run)
    rows = []
    for (dataset, student, image_size, recipe_items), members in groups.items():
        recipe = dict(recipe_items)
        model = MODELS.get((student, image_size))
        match = published.get((model, dataset)) if model else None
        row = {"dataset": dataset, "student": student, "image_size": image_size, "official_model": model if match else None,
               **{k: (",".join(map(str, v)) if k == "milestones" else v) for k, v in recipe.items()},
               "interpolation": recipe.get("interpolation"), **stats(members)}
        size = [] if model else [f"{image_size} px (published: {published_sizes(student)})"]
        row["recipe_differs"] = "; ".join(size + differences(recipe))
        for metric in METRICS:
            theirs = float(match[metric]) if match else None
            row[f"official_{metric}"] = theirs
            row[f"{metric}_diff"] = None if theirs is None else round(row[f"{metric}_mean"] - theirs, 6)
        row["compared"] = compared(row)
        rows.append(row)
    order = {model: i for i, model in enumerate(MODELS.values())}
    return sorted(rows, key=lambda r: (DATASETS.index(r["dataset"]) if r["dataset"] in DATASETS else len(DATASETS),
                                       r["dataset"], order.get(r["official_model"], len(order)), r["student"],
                                       r["image_size"], r["recipe_differs"]))


def published_sizes(student: str) -> str:
    return ", ".join(f"{px} px" for (name, px) in MODELS if name == student)


def compared(row: dict) -> str:
    """One sentence: which of our runs were set beside which published row, and how their recipes differ."""
    kept = "best-val-AUC" if row["keep"] == "best" else f"{row['keep']}-epoch"
    ours = (f"{row['dataset']}: our {row['student']} at {row['image_size']} px, CE, {kept} weights, "
            f"{row['in_chans']} channel(s), {row['epochs']} epochs (n={row['n']}, seeds {row['seeds']})")
    if row["official_model"] is None:
        return f"{ours}: no published row (MedMNIST v2 reports {row['student']} at {published_sizes(row['student'])} only)"
    recipe = f"recipe differs: {row['recipe_differs']}" if row["recipe_differs"] else "the published recipe"
    return f"{ours} vs MedMNIST v2 {row['official_model']}: {recipe}"


def medmnist_markdown(rows: list[dict]) -> str:
    lines = ["| dataset | published model | student | px | recipe differs from published | n | AUC | official AUC "
             "| ΔAUC | ACC | official ACC | ΔACC |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['official_model'] or ''} | {r['student']} | {r['image_size']} "
                     f"| {r['recipe_differs'] or 'no'} | {r['n']} "
                     f"| {pm(r['auc_mean'], r['auc_std'])} | {opt(r['official_auc'])} | {opt(r['auc_diff'], True)} "
                     f"| {pm(r['acc_mean'], r['acc_std'])} | {opt(r['official_acc'])} | {opt(r['acc_diff'], True)} |")
    lines += ["", "Compared:"] + [f"- {r['compared']}" for r in rows]
    return "\n".join(lines)
