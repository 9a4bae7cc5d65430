"""The trainer against what it promises, not against another run of itself.

- the student learns: on the toy data (each class brightens its own band) its validation AUC ends far above chance;
- each step's loss is `kd_loss` (CA-MKD's for several teachers) of the student's logits against the cached
  teacher logits of the same samples, at the run's t and alpha, and the optimizer takes that step;
- the weights kept (best.pt, metrics.json, test_scores.npy) are the epoch's with the best validation AUC,
  best.pt is written once, when training ends, and --patience stops the run;
- --teachers a,b runs through `distill` and `sweep`.

The student is timm's tiny `test_resnet`. The second teacher cache is the ViT-S/14 cache copied under
the ViT-B/14 name with other logits: a random ViT-B/14 file would be 350 MB, and `distill` reads only the cache.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from conftest import make_npz, run_cli
from torch import nn

from medal.cache.store import cache_key
from medal.data.preprocess import MEDMNIST_MEAN, MEDMNIST_STD, Preprocess
from medal.losses.ca_mkd import ca_mkd_loss
from medal.losses.kd_loss import kd_loss
from medal.models.students import build_student
from medal.pipeline import distill
from medal.pipeline.cache_teacher import CacheConfig, run_cache_teacher
from medal.pipeline.evaluate import evaluate_scores, predict
from medal.pipeline.linear_head import HeadRecipe
from medal.pipeline.student_step import StudentStep
from medal.study.sweep import distill_command

SPLITS = {"train": 64, "val": 32, "test": 32}
STUDENT = ["--student", "test_resnet", "--image-size", "28", "--batch-size", "16", "--milestones", "100",
           "--device", "cpu"]
A, B = "dinov2_vits14", "dinov2_vitb14"


def rows(run: Path) -> list[dict]:
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread: these tiny models gain nothing from more, and lose much on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("medmnist")
    make_npz(root, "bloodmnist", n=SPLITS)
    return root


@pytest.fixture(scope="module")
def caches(root, vits_weights, tmp_path_factory) -> dict:
    """Two teacher caches of the toy data: a real ViT-S/14 one, and a copy of it as ViT-B/14 with other logits.

    Returns the cache folder, the two keys, and each teacher's train logits as the cache holds them."""
    cache_dir = tmp_path_factory.mktemp("cache")
    first = run_cache_teacher(CacheConfig(dataset="bloodmnist", teacher=A, weights=vits_weights, root=root, image_size=28,
                                          batch_size=32, device="cpu", cache_dir=cache_dir, head=HeadRecipe(epochs=2))).cache
    second = cache_dir / f"{cache_key('bloodmnist', 28, B, 28, 'other weights')}.zarr"
    shutil.copytree(first.path, second)
    group = zarr.open_group(second, mode="r+")
    group.attrs.update({"teacher": B, "created": group.attrs["created"] + "+1"})  # listed after the first
    rng = np.random.default_rng(1)
    for split, n in SPLITS.items():
        zarr.open_array(second / split / "logits", mode="r+")[...] = 3 * rng.standard_normal((n, 8), dtype=np.float32)
    logits = {A: first.logits("train"), B: zarr.open_array(second / "train" / "logits", mode="r")[...]}
    assert not np.allclose(logits[A], logits[B])
    return {"dir": cache_dir, "keys": [first.key, second.name.removesuffix(".zarr")], "logits": logits}


# --- the student learns --------------------------------------------------------------------------------


def test_student_learns_the_toy_data(root, tmp_path, capsys, monkeypatch):
    """Untrained, test_resnet scores a validation AUC of 0.5-0.7 here; trained, it must reach 0.9."""
    run = tmp_path / "run"
    code, out, err = run_cli(["distill", "--dataset", "bloodmnist", "--root", root, "--alpha", "1", "--lr", "0.01",
                              "--epochs", "4", "--out", run, "--json", *STUDENT], capsys, monkeypatch)
    assert code == 0, err
    metrics, history = json.loads(out), rows(run)
    aucs = [float(r["val_auc"]) for r in history]
    assert max(aucs) >= 0.9, f"the student did not learn: val AUC per epoch {aucs}"
    assert metrics["val"]["auc"] >= 0.9 and metrics["test"]["auc"] >= 0.9, metrics
    assert float(history[-1]["train_loss"]) < 0.5 * float(history[0]["train_loss"]), history


# --- each step: the loss against the same samples' teacher logits, and the optimizer's step -------------


class Tiny(nn.Module):
    """A model without batch statistics: its output on a batch does not depend on the batch's other samples."""

    def __init__(self, classes: int):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.fc = nn.Linear(4 * 7 * 7, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.mark.parametrize("teachers", [1, 2])
@pytest.mark.parametrize("multi_label", [False, True])
@pytest.mark.parametrize("handed_in", [False, True])
def test_student_step_loss_is_kd_loss_on_the_same_samples(teachers, multi_label, handed_in):
    """One StudentStep: its loss is the loss of the model's logits against the teacher logits and targets of
    the very samples `idx` (checked against another sample's, and another t), and SGD moves the weights by
    exactly that loss's gradient."""
    n, c, t, alpha, lr = 20, 5, 3.0, 0.3, 0.1
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g)
    targets = (torch.rand(n, c, generator=g) < 0.4).float() if multi_label else torch.randint(0, c, (n,), generator=g)
    teacher = 4 * torch.randn((teachers, n, c) if teachers > 1 else (n, c), generator=g)  # different for every sample
    loss_fn = ca_mkd_loss if teachers > 1 else kd_loss
    pick = (lambda i: teacher[:, i]) if teachers > 1 else (lambda i: teacher[i])

    torch.manual_seed(0)
    model = Tiny(c)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prep = Preprocess(16, MEDMNIST_MEAN, MEDMNIST_STD, torch.device("cpu"))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    step = StudentStep(model, optimizer, prep, None if handed_in else images, targets, teacher, t=t, alpha=alpha,
                       multi_label=multi_label, device=torch.device("cpu"))
    idx = torch.tensor([7, 2, 19, 11, 0, 5])

    def expected(model, teacher_idx=idx, t=t):
        logits = model(prep(images[idx]))
        return loss_fn(logits, pick(teacher_idx), targets[idx], t=t, alpha=alpha, multi_label=multi_label)

    reference = expected(model)
    model.zero_grad()
    reference.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    with torch.no_grad():
        other_sample = expected(model, teacher_idx=idx.roll(1))
        other_t = expected(model, t=1.0)
    assert abs(other_sample - reference) > 1e-3 and abs(other_t - reference) > 1e-3  # the check can tell them apart

    loss = step(idx, images[idx] if handed_in else None)
    torch.testing.assert_close(loss, reference.detach(), rtol=1e-6, atol=1e-7)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), before[name] - lr * grads[name], rtol=1e-6, atol=1e-7, msg=name)


def _record_steps(monkeypatch) -> list[dict]:
    """Every StudentStep call of the run: its samples, their images, and what the loss function was handed."""
    calls: list[dict] = []
    call = StudentStep.__call__

    def recording_call(self, idx, images=None):
        calls.append({"idx": idx.clone(), "images": images.clone()})
        return call(self, idx, images)

    def recording(fn):
        def loss(student_logits, teacher_logits, target, *, t, alpha, multi_label=False):
            teacher = None if teacher_logits is None else teacher_logits.clone()
            calls[-1].update(teacher=teacher, target=target.clone(), t=t, alpha=alpha, fn=fn.__name__)
            return fn(student_logits, teacher_logits, target, t=t, alpha=alpha, multi_label=multi_label)
        return loss

    monkeypatch.setattr(StudentStep, "__call__", recording_call)
    monkeypatch.setattr("medal.pipeline.student_step.kd_loss", recording(kd_loss))
    monkeypatch.setattr("medal.losses.ca_mkd.ca_mkd_loss", recording(ca_mkd_loss))
    return calls


def _assert_steps_saw_their_own_samples(calls: list[dict], root: Path, teacher: np.ndarray, t: float, alpha: float,
                                        fn: str) -> None:
    data = np.load(root / "bloodmnist.npz")
    images, labels = data["train_images"], data["train_labels"][:, 0]
    seen = torch.cat([c["idx"] for c in calls]).tolist()
    assert sorted(seen) == sorted(list(range(SPLITS["train"])) * (len(seen) // SPLITS["train"])), "every sample once an epoch"
    for n, call in enumerate(calls):
        idx = call["idx"].numpy()
        assert call["fn"] == fn, f"step {n}: loss {call['fn']}, not {fn}"
        assert (call["t"], call["alpha"]) == (t, alpha), f"step {n}: t={call['t']} alpha={call['alpha']}, not the run's {t}, {alpha}"
        if not np.array_equal(call["images"].permute(0, 2, 3, 1).numpy(), images[idx]):
            pytest.fail(f"step {n}: the images are not those of the samples whose teacher logits it got")
        if not np.array_equal(call["target"].numpy(), labels[idx]):
            pytest.fail(f"step {n}: the targets are not those of its samples")
        if not np.array_equal(call["teacher"].numpy(), teacher[..., idx, :]):
            pytest.fail(f"step {n}: a sample got another sample's teacher logits")


def test_distill_hands_each_sample_its_own_teacher_logits(root, caches, tmp_path, capsys, monkeypatch):
    calls = _record_steps(monkeypatch)
    run = tmp_path / "run"
    code, out, err = run_cli(["distill", "--dataset", "bloodmnist", "--cache-dir", caches["dir"], "--teacher", A,
                              "--t", "3.5", "--alpha", "0.3", "--epochs", "2", "--out", run, "--json", *STUDENT],
                             capsys, monkeypatch)
    assert code == 0, err
    assert len(calls) == 2 * SPLITS["train"] // 16
    _assert_steps_saw_their_own_samples(calls, root, caches["logits"][A], 3.5, 0.3, "kd_loss")
    assert json.loads(out)["config"]["cache_key"] == caches["keys"][0]


# --- several teachers: distill and sweep -----------------------------------------------------------------


def test_two_teachers_through_distill(root, caches, tmp_path, capsys, monkeypatch):
    calls = _record_steps(monkeypatch)
    run = tmp_path / "run"
    code, out, err = run_cli(["distill", "--dataset", "bloodmnist", "--cache-dir", caches["dir"], "--teachers", f"{A},{B}",
                              "--t", "2.5", "--alpha", "0.4", "--epochs", "1", "--out", run, "--json", *STUDENT],
                             capsys, monkeypatch)
    assert code == 0, err
    config = json.loads(out)["config"]
    assert config["teachers"] == [A, B] and config["cache_keys"] == caches["keys"]
    stacked = np.stack([caches["logits"][A], caches["logits"][B]])
    _assert_steps_saw_their_own_samples(calls, root, stacked, 2.5, 0.4, "ca_mkd_loss")


def test_two_teachers_through_sweep(root, caches, tmp_path, capsys, monkeypatch):
    calls = _record_steps(monkeypatch)
    runs = tmp_path / "runs"
    code, out, err = run_cli(["sweep", "--dataset", "bloodmnist", "--cache-dir", caches["dir"], "--teachers", f"{A},{B}",
                              "--t", "2", "--alpha", "0.5", "--epochs", "1", "--runs-dir", runs, "--json", *STUDENT],
                             capsys, monkeypatch)
    assert code == 0, err
    [point] = json.loads(out)
    run = Path(point["run"])
    assert run.name == f"bloodmnist_test_resnet_ca-mkd_{A}+{B}_t2_a0.5_s0"
    config = json.loads((run / "config.json").read_text())
    assert config["teachers"] == [A, B] and config["cache_keys"] == caches["keys"]
    _assert_steps_saw_their_own_samples(calls, root, np.stack([caches["logits"][A], caches["logits"][B]]), 2.0, 0.5,
                                        "ca_mkd_loss")
    # --jobs N trains each point in a child process: its command line names both teachers too
    command = distill_command(distill.DistillConfig(dataset="bloodmnist", teacher=A, teachers=(A, B), out=run))
    assert command[command.index("--teachers") + 1] == f"{A},{B}" and "--teacher" not in command


# --- the kept epoch and --patience -----------------------------------------------------------------------


def _script_val_auc(monkeypatch, aucs: list[float]) -> list[dict]:
    """The training loop sees these validation AUCs, epoch by epoch; returns the weights each epoch was scored with."""
    scored: list[dict] = []
    script = iter(aucs)
    evaluate_scores, predict_ = distill.evaluate_scores, distill.predict

    def scripted(labels, scores, task):
        return {**evaluate_scores(labels, scores, task), "auc": next(script)}

    def remembering(model, *args, **kwargs):
        scored.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return predict_(model, *args, **kwargs)

    monkeypatch.setattr(distill, "evaluate_scores", scripted)
    monkeypatch.setattr(distill, "predict", remembering)
    return scored


# Epoch 2 ties epoch 1 (no improvement), 3 is the best, 4 falls, 5 ties the best (no improvement).
SCRIPT = [0.6, 0.6, 0.7, 0.65, 0.7, 0.9, 0.95, 0.99]


def test_kept_weights_are_the_best_val_auc_epoch(root, tmp_path, capsys, monkeypatch):
    scored = _script_val_auc(monkeypatch, SCRIPT)
    run = tmp_path / "run"
    code, out, err = run_cli(["distill", "--dataset", "bloodmnist", "--root", root, "--alpha", "1", "--lr", "0.01",
                              "--epochs", "5", "--out", run, "--json", *STUDENT], capsys, monkeypatch)
    assert code == 0, err
    metrics = json.loads(out)
    assert [float(r["val_auc"]) for r in rows(run)] == SCRIPT[:5] and len(scored) == 5
    assert metrics["kept"] == "best" and metrics["last_epoch"]["epoch"] == 5
    kept = torch.load(run / "best.pt", map_location="cpu")
    assert (metrics["kept_epoch"], kept["epoch"]) == (3, 3), "kept another epoch than the first with the best val AUC"
    for name, value in scored[2].items():  # the weights epoch 3 was scored with
        assert torch.equal(kept["model"][name], value), f"best.pt is not epoch 3's: {name}"
    assert any(not torch.equal(scored[2][k], scored[4][k]) for k in scored[2]), "epochs 3 and 5 must differ"

    # test_scores.npy and the metrics come from those weights, not from the last epoch's
    model = build_student("test_resnet", 8)
    model.load_state_dict(scored[2])
    test_images = torch.from_numpy(np.load(root / "bloodmnist.npz")["test_images"]).permute(0, 3, 1, 2)
    prep = Preprocess(28, MEDMNIST_MEAN, MEDMNIST_STD, torch.device("cpu"))
    scores = predict(model, test_images, prep, "multi-class", torch.device("cpu"))
    np.testing.assert_allclose(np.load(run / "test_scores.npy"), scores, rtol=1e-5, atol=1e-6,
                               err_msg="test_scores.npy does not come from the kept (epoch 3) weights")
    expected = evaluate_scores(np.load(root / "bloodmnist.npz")["test_labels"], scores, "multi-class")
    assert metrics["test"] == pytest.approx(expected)


@pytest.mark.parametrize("live", [True, False], ids=["cpu-live-state", "gpu-state-copy"])
def test_a_skipped_checkpoint_still_keeps_the_best_epoch(root, tmp_path, capsys, monkeypatch, live):
    """Epoch 3 (the best) comes while the writer is busy, so it gets no checkpoint; epoch 4's carries its weights,
    from which best.pt is written: what a resume from epoch 4's checkpoint rewrites best.pt from, too. Either way
    of copying the state (medal.pipeline.distill.epoch_state): the GPU's is taken on the CPU here."""
    from medal.pipeline import distill
    from medal.pipeline.checkpoint import Checkpoint
    from medal.runtime.background import BackgroundWriter

    scored = _script_val_auc(monkeypatch, SCRIPT)
    monkeypatch.setattr(distill, "copies_live_state", lambda device: live)
    offers, saved, busy, prepare = [], [], BackgroundWriter.busy, Checkpoint.prepare
    monkeypatch.setattr(BackgroundWriter, "busy", lambda self: offers.append(1) or len(offers) == 3 or busy(self))
    monkeypatch.setattr(Checkpoint, "prepare", lambda self, state: saved.append(state) or prepare(self, state))
    run = tmp_path / "run"
    code, _, err = run_cli(["distill", "--dataset", "bloodmnist", "--root", root, "--alpha", "1", "--lr", "0.01",
                            "--epochs", "5", "--out", run, *STUDENT], capsys, monkeypatch)
    assert code == 0, err
    assert [s["epoch"] for s in saved] == [1, 2, 4, 5] and [s["kept"]["epoch"] for s in saved] == [1, 1, 3, 3]
    for kept in (saved[2]["kept"]["model"], torch.load(run / "best.pt", map_location="cpu")["model"]):
        for name, value in scored[2].items():  # the weights epoch 3 was scored with
            assert torch.equal(kept[name], value), f"not epoch 3's: {name}"


def test_every_cpu_checkpoint_has_the_same_size(root, tmp_path, capsys, monkeypatch):
    """Each checkpoint is written over the file of the one before the last (medal.runtime.io.atomic's `keep`),
    and on the CPU the kept weights go into it apart from the model in every epoch, better or not: so no
    checkpoint outgrows the file it is written over, which would allocate blocks on the disk."""
    from medal.pipeline.checkpoint import Checkpoint

    _script_val_auc(monkeypatch, SCRIPT)  # epochs 1 and 3 better than the ones before, 2, 4 and 5 not
    sizes, on_disk = [], Checkpoint.on_disk
    monkeypatch.setattr(Checkpoint, "on_disk", lambda self, state: sizes.append(self.path.stat().st_size)
                        or on_disk(self, state))
    run = tmp_path / "run"
    code, _, err = run_cli(["distill", "--dataset", "bloodmnist", "--root", root, "--alpha", "1", "--epochs", "5",
                            "--out", run, *STUDENT], capsys, monkeypatch)
    assert code == 0, err
    weights = sum(t.numel() * t.element_size() for t in torch.load(run / "best.pt")["model"].values())
    assert len(sizes) == 5 and max(sizes) - min(sizes) < weights / 10, (sizes, weights)


def test_best_pt_is_written_once_when_training_ends(root, tmp_path, capsys, monkeypatch):
    """Epochs 1 and 3 are better than the ones before: best.pt is written once, after the last checkpoint, not
    after each of them (the checkpoints carry those weights)."""
    from medal.pipeline import checkpoint

    _script_val_auc(monkeypatch, SCRIPT)
    written, write_torch, prepare = [], checkpoint.write_torch, checkpoint.Checkpoint.prepare
    monkeypatch.setattr(checkpoint, "write_torch", lambda path, obj, **kw: written.append(
        (Path(path).name, obj["epoch"])) or write_torch(path, obj, **kw))
    monkeypatch.setattr(checkpoint.Checkpoint, "prepare", lambda self, state: written.append(
        ("checkpoint.pt", state["epoch"])) or prepare(self, state))
    code, _, err = run_cli(["distill", "--dataset", "bloodmnist", "--root", root, "--alpha", "1", "--epochs", "5",
                            "--out", tmp_path / "run", *STUDENT], capsys, monkeypatch)
    assert code == 0, err
    assert [w for w in written if w[0] == "best.pt"] == [("best.pt", 3)], written
    assert written[-2:] == [("checkpoint.pt", 5), ("best.pt", 3)], written


def test_patience_stops_the_run(root, tmp_path, capsys, monkeypatch):
    """--patience 2: epochs 4 and 5 do not beat epoch 3, so the run stops after epoch 5 of 8, keeping epoch 3."""
    _script_val_auc(monkeypatch, SCRIPT)
    run = tmp_path / "run"
    code, out, err = run_cli(["distill", "--dataset", "bloodmnist", "--root", root, "--alpha", "1", "--patience", "2",
                              "--epochs", "8", "--out", run, "--json", *STUDENT], capsys, monkeypatch)
    assert code == 0, err
    assert [int(r["epoch"]) for r in rows(run)] == [1, 2, 3, 4, 5], "--patience 2 did not stop the run after epoch 5"
    assert "early stop: val AUC has not improved for 2 epochs" in err
    metrics = json.loads(out)
    assert metrics["kept_epoch"] == 3 and metrics["last_epoch"]["epoch"] == 5
