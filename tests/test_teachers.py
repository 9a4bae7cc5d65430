"""Any teacher: a finished medal run, a timm model, several teachers averaged; and what they refuse.

Everything is tiny: 48/24/24 generated images, timm's `test_resnet` as the run's student, resnet18 at 28 px
as the timm teacher, one epoch each.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F
import zarr
from conftest import error_lines, make_npz, run_cli

from medal.runtime.io import file_hash

RUN_ARGS = ["--alpha", "1", "--student", "test_resnet", "--epochs", "1", "--batch-size", "16", "--image-size", "32",
            "--interpolation", "nearest", "--device", "cpu"]  # nearest, not the default: the run's own preprocessing
STUDENT_ARGS = ["--student", "test_resnet", "--epochs", "1", "--batch-size", "16", "--image-size", "28", "--device", "cpu"]
TIMM_ARGS = ["--teacher", "resnet18", "--image-size", "28", "--head-epochs", "2", "--batch-size", "32", "--device", "cpu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("medmnist")
    make_npz(root, "bloodmnist")
    return root


@pytest.fixture(scope="module")
def ce_run(data, tmp_path_factory) -> Path:
    """A finished plain-CE run: the teacher of the run-teacher tests (module-wide: it is the slow part)."""
    from medal.pipeline.distill import DistillConfig, run_distill

    out = tmp_path_factory.mktemp("runs") / "ce_test_resnet_s0"
    return run_distill(DistillConfig(dataset="bloodmnist", root=data, alpha=1, student="test_resnet", epochs=1,
                                     batch_size=16, image_size=32, interpolation="nearest", device="cpu", out=out))


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18.safetensors"
    safetensors.torch.save_file(timm.create_model("resnet18", num_classes=0).state_dict(), str(path))
    return path


def cache_teacher(args, capsys, monkeypatch) -> dict:
    code, out, err = run_cli(["cache-teacher", "--dataset", "bloodmnist", "--json", *args], capsys, monkeypatch)
    assert code == 0, err
    return json.loads(out)


def test_run_teacher_caches_its_test_scores_and_teaches(data, ce_run, tmp_path, capsys, monkeypatch):
    cache_dir = tmp_path / "cache"
    info = cache_teacher(["--teacher", ce_run, "--root", data, "--cache-dir", cache_dir, "--device", "cpu"],
                         capsys, monkeypatch)
    assert info["teacher_kind"] == "run" and info["teacher"] == str(ce_run.resolve())
    assert info["weights_sha256"] == file_hash(ce_run / "best.pt", "sha256") and info["weights_sha256"][:12] in info["key"]
    assert ce_run.name in info["key"] and info["image_size"] == 32
    assert info["license"] == "CC BY 4.0" and info["preprocessing"]["interpolation"] == "nearest"

    group = zarr.open_group(info["path"], mode="r")
    assert "features" not in group["test"] and "head" not in group, "a run is already a classifier: no features, no head"
    logits = torch.as_tensor(group["test/logits"][...])
    np.testing.assert_allclose(torch.softmax(logits, 1).numpy(), np.load(ce_run / "test_scores.npy"), atol=1e-6, rtol=0)
    metrics = json.loads((ce_run / "metrics.json").read_text())
    assert info["head_metrics"]["test"]["auc"] == pytest.approx(metrics["test"]["auc"], abs=1e-9)

    code, out, err = run_cli(["cache", "verify", "--cache-dir", cache_dir], capsys, monkeypatch)
    assert code == 0 and out.startswith("ok"), out + err
    code, out, _ = run_cli(["cache-teacher", "--dataset", "bloodmnist", "--teacher", ce_run, "--root", data,
                            "--cache-dir", cache_dir, "--device", "cpu"], capsys, monkeypatch)
    assert code == 0 and "already cached" in out

    run = tmp_path / "kd"
    code, out, err = run_cli(["distill", "--dataset", "bloodmnist", "--teacher", ce_run, "--alpha", "0.2",
                              "--cache-dir", cache_dir, "--out", run, "--json", *STUDENT_ARGS], capsys, monkeypatch)
    assert code == 0, err
    config = json.loads(out)["config"]
    assert config["cache_key"] == info["key"] and config["teachers"] == [str(ce_run.resolve())]
    card = (run / "MODEL_CARD.md").read_text()
    assert info["weights_sha256"] in card and "Teacher licence" in card and "derivatives" in card

    # run names and the report call a run teacher by its directory's name
    from medal.pipeline.distill import DistillConfig
    assert DistillConfig(alpha=0.2, student="s").run_name("bloodmnist", str(ce_run.resolve())) == \
        f"bloodmnist_s_{ce_run.name}_t2_a0.2_s0"
    code, out, err = run_cli(["report", "--runs", tmp_path, "--cache-dir", cache_dir], capsys, monkeypatch)
    assert code == 0, err
    assert f"| KD test_resnet ({ce_run.name}, t=2, alpha=0.2) | {ce_run.name} |" in out
    assert f"| teacher run {ce_run.name} | {ce_run.name} |" in out


def test_retrained_run_is_a_new_cache(data, tmp_path, capsys, monkeypatch):
    run, cache_dir = tmp_path / "runs" / "ce", tmp_path / "cache"
    train = ["distill", "--dataset", "bloodmnist", "--root", data, "--out", run, *RUN_ARGS]
    assert run_cli(train, capsys, monkeypatch)[0] == 0
    teacher = ["--teacher", run, "--root", data, "--cache-dir", cache_dir, "--device", "cpu"]
    first = cache_teacher(teacher, capsys, monkeypatch)

    assert run_cli(train + ["--seed", "1", "--force"], capsys, monkeypatch)[0] == 0  # retrained in place
    code, _, err = run_cli(["distill", "--dataset", "bloodmnist", "--teacher", run, "--cache-dir", cache_dir,
                            "--out", tmp_path / "kd", *STUDENT_ARGS], capsys, monkeypatch)
    assert code == 1 and len(error_lines(err)) == 1 and "earlier best.pt" in err, err
    second = cache_teacher(teacher, capsys, monkeypatch)
    assert second["created"] and second["key"] != first["key"]
    assert second["weights_sha256"] == file_hash(run / "best.pt", "sha256") != first["weights_sha256"]


def test_timm_teacher_features_head_and_distillation(data, resnet18_file, tmp_path, capsys, monkeypatch):
    cache_dir = tmp_path / "cache"
    info = cache_teacher([*TIMM_ARGS, "--weights", resnet18_file, "--root", data, "--cache-dir", cache_dir],
                         capsys, monkeypatch)
    assert info["teacher_kind"] == "timm" and info["teacher"] == "resnet18" and info["feature_dim"] == 512
    assert info["weights_sha256"] == file_hash(resnet18_file, "sha256")
    assert info["key"] == f"bloodmnist_28_resnet18_28_{info['weights_sha256'][:12]}"
    assert info["license"] == "apache-2.0" and "timm pretrained config" in info["license_source"]
    prep = info["preprocessing"]  # from timm's pretrained config, but for --image-size
    assert prep["interpolation"] == "bicubic" and prep["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert prep["image_size"] == 28

    group = zarr.open_group(info["path"], mode="r")
    assert group["train/features"].shape == (48, 512) and group["head/weight"].shape == (8, 512)
    w, b = group["head/weight"][...], group["head/bias"][...]
    np.testing.assert_allclose(group["test/logits"][...], group["test/features"][...].astype(np.float32) @ w.T + b,
                               rtol=1e-4, atol=1e-4)

    code, out, err = run_cli(["distill", "--dataset", "bloodmnist", "--teacher", "resnet18", "--cache-dir", cache_dir,
                              "--out", tmp_path / "kd", "--json", *STUDENT_ARGS], capsys, monkeypatch)
    assert code == 0, err
    assert json.loads(out)["config"]["cache_key"] == info["key"]
    assert "apache-2.0" in (tmp_path / "kd" / "MODEL_CARD.md").read_text()


def test_timm_preprocessing_defaults_to_the_pretrained_config():
    from medal.models.teacher_spec import parse_teacher, teacher_label, timm_preprocessing

    model = timm.create_model("resnet18", num_classes=0)
    assert timm_preprocessing(model, None)["image_size"] == 224 and timm_preprocessing(model, 64)["image_size"] == 64
    assert parse_teacher("hf-hub:org/name").kind == "timm" and teacher_label("hf-hub:org/name") == "hf-hub-org-name"
    assert parse_teacher("dinov2_vits14").kind == "dinov2" and parse_teacher("convnext_small").kind == "timm"


@pytest.mark.parametrize("multi_label", [False, True])
def test_mean_weighting_is_the_mean_of_probabilities(multi_label):
    from medal.losses.ca_mkd import mean_teacher_logits
    from medal.losses.kd_loss import kd_loss_torch

    torch.manual_seed(0)
    t, alpha, k, b, c = 3.0, 0.3, 3, 5, 4
    teachers, student = torch.randn(k, b, c) * 4, torch.randn(b, c)
    target = torch.randint(0, 2, (b, c)).float() if multi_label else torch.randint(0, c, (b,))
    soft = mean_teacher_logits(teachers, t, multi_label)
    if multi_label:
        p = torch.sigmoid(teachers / t).mean(0)  # by hand
        torch.testing.assert_close(torch.sigmoid(soft / t), p)
        q = torch.sigmoid(student / t)
        kl = (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).mean()
        hard = F.binary_cross_entropy_with_logits(student, target)
    else:
        p = torch.softmax(teachers / t, -1).mean(0)
        torch.testing.assert_close(torch.softmax(soft / t, -1), p)
        kl = (p * (p.log() - torch.log_softmax(student / t, -1))).sum(-1).mean()
        hard = F.cross_entropy(student, target)
        assert not torch.allclose(torch.softmax(teachers.mean(0) / t, -1), p, atol=1e-3), "not a mean of logits"
    loss = kd_loss_torch(student, soft, target, t=t, alpha=alpha, multi_label=multi_label)
    torch.testing.assert_close(loss, alpha * hard + (1 - alpha) * t * t * kl)
    assert math.isfinite(mean_teacher_logits(torch.tensor([[[1e4, -1e4]], [[1e4, -1e4]]]), 1.0).abs().max().item())


def test_two_teachers_averaged_end_to_end(data, ce_run, resnet18_file, tmp_path, capsys, monkeypatch):
    from medal.cache.store import find_cache
    from medal.pipeline.distill import teacher_logits

    cache_dir = tmp_path / "cache"
    a = cache_teacher(["--teacher", ce_run, "--root", data, "--cache-dir", cache_dir, "--device", "cpu"], capsys, monkeypatch)
    b = cache_teacher([*TIMM_ARGS, "--weights", resnet18_file, "--root", data, "--cache-dir", cache_dir],
                      capsys, monkeypatch)
    runs = tmp_path / "runs"  # distill's default --out: runs/<name> below the working directory
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["distill", "--dataset", "bloodmnist", "--teachers", f"{ce_run},resnet18", "--t", "4",
                              "--teacher-weighting", "mean", "--cache-dir", cache_dir, "--json",
                              *STUDENT_ARGS], capsys, monkeypatch)
    assert code == 0, err
    result = json.loads(out)
    assert result["config"]["teacher_weighting"] == "mean" and result["config"]["cache_keys"] == [a["key"], b["key"]]
    assert Path(result["run"]).name == f"bloodmnist_test_resnet_mean_{ce_run.name}+resnet18_t4_a0.2_s0"

    caches = [find_cache(cache_dir, a["key"]), find_cache(cache_dir, b["key"])]
    soft = teacher_logits(caches, 48, 8, torch.device("cpu"), weighting="mean", t=4.0)
    by_hand = np.mean([torch.softmax(torch.as_tensor(c.logits("train")) / 4, 1).numpy() for c in caches], axis=0)
    np.testing.assert_allclose(torch.softmax(soft / 4, 1).numpy(), by_hand, atol=1e-6)
    assert teacher_logits(caches, 48, 8, torch.device("cpu")).shape == (2, 48, 8), "ca-mkd keeps every teacher"

    code, out, err = run_cli(["report", "--runs", runs, "--cache-dir", cache_dir], capsys, monkeypatch)
    assert code == 0, err
    assert f"| mean of teachers (test_resnet, {ce_run.name}+resnet18, t=4, alpha=0.2) | {ce_run.name}+resnet18 |" in out


def _bad_inputs(tmp_path: Path, data: Path, ce_run: Path, resnet18_file: Path) -> dict:
    unfinished = tmp_path / "runs" / ".halfway.partial"
    unfinished.mkdir(parents=True)
    incomplete = tmp_path / "runs" / "incomplete"
    incomplete.mkdir()
    for name in ("config.json", "best.pt", "metrics.json"):  # no test_scores.npy
        (incomplete / name).write_bytes((ce_run / name).read_bytes())
    other = tmp_path / "other"
    make_npz(other, "pathmnist", classes=9)
    relabelled = tmp_path / "relabelled"
    make_npz(relabelled, "bloodmnist", seed=3)
    torch.manual_seed(0)
    wrong = tmp_path / "resnet10t.safetensors"
    safetensors.torch.save_file(timm.create_model("resnet10t", num_classes=0).state_dict(), str(wrong))
    teacher = ["cache-teacher", "--dataset", "bloodmnist", "--root", data, "--device", "cpu"]
    return {
        "unknown timm name": ([*teacher, "--teacher", "resnet_xyz"], "unknown teacher 'resnet_xyz'"),
        "weights that do not fit": ([*teacher, "--teacher", "resnet18", "--weights", wrong], "do not fit resnet18"),
        "missing weights file": ([*teacher, "--teacher", "resnet18", "--weights", tmp_path / "none.safetensors"],
                                 "does not exist"),
        "bad teacher args": ([*teacher, "--teacher", "resnet18", "--weights", resnet18_file, "--teacher-args",
                              "no_such_arg=1"], "does not take these creation arguments"),
        "run that did not finish": ([*teacher, "--teacher", tmp_path / "runs" / "halfway"], "did not finish"),
        "run without test scores": ([*teacher, "--teacher", incomplete], "not a finished medal run"),
        "run of another dataset": (["cache-teacher", "--dataset", "pathmnist", "--root", other, "--teacher", ce_run,
                                    "--device", "cpu"], "was trained on bloodmnist, not pathmnist"),
        "run of other labels": (["cache-teacher", "--dataset", "bloodmnist", "--root", relabelled, "--teacher", ce_run,
                                 "--device", "cpu"], "other bloodmnist data or labels"),
        "run with --weights": ([*teacher, "--teacher", ce_run, "--weights", resnet18_file], "drop --weights"),
        "run at another size": ([*teacher, "--teacher", ce_run, "--image-size", "64"], "drop --image-size 64"),
        "distill from an unfinished run": (["distill", "--dataset", "bloodmnist", "--root", data, "--teacher",
                                            tmp_path / "runs" / "halfway"], "did not finish"),
        "unknown teacher in --teachers": (["distill", "--dataset", "bloodmnist", "--root", data, "--teachers", "a,b",
                               "--teacher-weighting", "max"], "unknown teacher 'a'"),
        "bad weighting": (["distill", "--dataset", "bloodmnist", "--root", data, "--teacher-weighting", "max"],
                          "--teacher-weighting must be one of ca-mkd, mean"),
    }


BAD = ["unknown timm name", "weights that do not fit", "missing weights file", "bad teacher args", "run that did not finish",
       "run without test scores", "run of another dataset", "run of other labels", "run with --weights",
       "run at another size", "distill from an unfinished run", "unknown teacher in --teachers", "bad weighting"]


@pytest.mark.parametrize("name", BAD)
def test_bad_teacher_input(name, data, ce_run, resnet18_file, tmp_path, capsys, monkeypatch):
    args, expected = _bad_inputs(tmp_path, data, ce_run, resnet18_file)[name]
    cache_dir, out = tmp_path / "cache", tmp_path / "kd"
    extra = ["--cache-dir", cache_dir] + (["--out", out] if args[0] == "distill" else [])
    code, stdout, err = run_cli([*args, *extra], capsys, monkeypatch)
    assert code == 1, (stdout, err)
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert "Traceback" not in err + stdout
    assert not cache_dir.exists() or not any(cache_dir.iterdir()), "a failed command must not leave a cache behind"
    assert not out.exists()


def test_sweep_forwards_the_teachers_and_their_weighting(tmp_path):
    from medal.pipeline.distill import DistillConfig
    from medal.study.sweep import distill_command

    cfg = DistillConfig(dataset="bloodmnist", teachers=("runs/a", "resnet18"), teacher_weighting="mean", out=tmp_path / "p")
    command = distill_command(cfg)
    assert command[command.index("--teachers") + 1] == "runs/a,resnet18"
    assert command[command.index("--teacher-weighting") + 1] == "mean" and "--teacher" not in command
    assert cfg.run_name("bloodmnist", "resnet18").startswith("bloodmnist_resnet50_mean_a+resnet18_t2")
    assert DistillConfig(teachers=("a", "b")).run_name("x", "a").startswith("x_resnet50_ca-mkd_a+b_t2")  # as before


def test_timm_teacher_offline_without_weights(data, tmp_path, capsys, monkeypatch):
    """No --weights and no hub: the same one-line error as DINOv2's (the download is simulated, never tried)."""
    import medal.models.teacher_spec

    real = timm.create_model

    def offline(*args, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("offline: no cached file")  # what huggingface_hub's LocalEntryNotFoundError is
        return real(*args, **kwargs)

    monkeypatch.setattr(medal.models.teacher_spec, "prepare_hub_download", lambda: None)
    monkeypatch.setattr(medal.models.teacher_spec.timm, "create_model", offline)
    code, out, err = run_cli(["cache-teacher", "--dataset", "bloodmnist", "--root", data, "--teacher", "resnet18",
                              "--cache-dir", tmp_path / "cache", "--device", "cpu"], capsys, monkeypatch)
    lines = error_lines(err)
    assert code == 1 and len(lines) == 1 and "timm weights for resnet18 could not be downloaded" in lines[0], err
    assert "pass --weights FILE" in lines[0] and not (tmp_path / "cache").exists()
