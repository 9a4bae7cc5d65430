"""The torch distillation loss against an independent float64 reference, plus its guards.

`reference_kd_loss` is written from the formulas (explicit max-subtracted log-sum-exp,
probabilities and logs), not from F.kl_div / F.cross_entropy, so it checks the torch
path rather than restating it. tests/test_kd_triton.py reuses it for the kernel.
"""

from __future__ import annotations

import importlib
import itertools
from types import SimpleNamespace

import pytest
import torch

from medal.losses.kd_loss import kd_loss, kd_loss_torch
from medal.runtime.errors import MedalError

TEMPERATURES = (0.5, 1.0, 2.0, 8.0)
ALPHAS = (0.0, 0.2, 1.0)
# task kind -> (number of classes, multi_label): binary is 2-class softmax, ordinal
# (RetinaMNIST) is plain multi-class, ChestMNIST is 14-label.
TASKS = {"multi-class": (9, False), "binary": (2, False), "ordinal": (5, False), "multi-label": (14, True)}
LOGIT_KINDS = ("random", "extreme", "all-equal", "one-hot-teacher")


def _log_softmax64(z: torch.Tensor) -> torch.Tensor:
    m = z.max(dim=1, keepdim=True).values
    return (z - m) - torch.log(torch.exp(z - m).sum(dim=1, keepdim=True))


def _log_sigmoid64(z: torch.Tensor) -> torch.Tensor:
    # log sigmoid(z) = -log(1 + exp(-z)), split by sign so exp never overflows.
    return torch.minimum(z, torch.zeros_like(z)) - torch.log1p(torch.exp(-z.abs()))


def reference_kd_loss(
    student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, t: float, alpha: float, multi_label: bool
) -> torch.Tensor:
    """The distillation loss from its definition, in float64 (differentiable wrt student)."""
    s, z_t = student.double(), teacher.double()
    if multi_label:
        y = target.double()
        ce = -(y * _log_sigmoid64(s) + (1 - y) * _log_sigmoid64(-s)).mean()
        log_p, log_1mp = _log_sigmoid64(z_t / t), _log_sigmoid64(-z_t / t)
        log_q, log_1mq = _log_sigmoid64(s / t), _log_sigmoid64(-s / t)
        p = torch.exp(log_p)
        kl = (p * (log_p - log_q) + torch.exp(log_1mp) * (log_1mp - log_1mq)).mean()
    else:
        b = s.shape[0]
        log_ps = _log_softmax64(s)
        ce = -log_ps[torch.arange(b), target.long()].sum() / b
        log_p, log_q = _log_softmax64(z_t / t), _log_softmax64(s / t)
        kl = (torch.exp(log_p) * (log_p - log_q)).sum() / b
    return alpha * ce + (1 - alpha) * t * t * kl


def reference_grad(
    student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, t: float, alpha: float, multi_label: bool
) -> torch.Tensor:
    """Closed-form float64 gradient wrt the student logits."""
    s, z_t = student.double(), teacher.double()
    if multi_label:
        n = s.numel()
        return (alpha * (torch.sigmoid(s) - target.double()) + (1 - alpha) * t * (torch.sigmoid(s / t) - torch.sigmoid(z_t / t))) / n
    onehot = torch.zeros_like(s)
    onehot[torch.arange(s.shape[0]), target.long()] = 1.0
    p, q, r = (torch.exp(_log_softmax64(x)) for x in (s, s / t, z_t / t))
    return (alpha * (p - onehot) + (1 - alpha) * t * (q - r)) / s.shape[0]


def make_case(
    kind: str, b: int, c: int, multi_label: bool, seed: int = 0, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Student logits, teacher logits and targets of one logit kind."""
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        s = 3 * torch.randn(b, c, generator=g)
        z_t = 3 * torch.randn(b, c, generator=g)
    elif kind == "extreme":
        s = torch.where(torch.rand(b, c, generator=g) < 0.5, -1e4, 1e4)
        z_t = torch.where(torch.rand(b, c, generator=g) < 0.5, -1e4, 1e4)
    elif kind == "all-equal":
        s = torch.full((b, c), 7.0)
        z_t = torch.full((b, c), -3.0)
    elif kind == "one-hot-teacher":
        s = torch.randn(b, c, generator=g)
        z_t = torch.full((b, c), -1e4)
        z_t[torch.arange(b), torch.randint(0, c, (b,), generator=g)] = 1e4
    else:
        raise ValueError(kind)
    if multi_label:
        y = (torch.rand(b, c, generator=g) < 0.3).float()
    else:
        y = torch.randint(0, c, (b,), generator=g)
    return s.to(dtype).to(device), z_t.to(dtype).to(device), y.to(device)


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("kind", LOGIT_KINDS)
def test_torch_path_matches_reference(task: str, kind: str) -> None:
    c, multi_label = TASKS[task]
    for i, (t, alpha) in enumerate(itertools.product(TEMPERATURES, ALPHAS)):
        s, z_t, y = make_case(kind, 5, c, multi_label, seed=i)
        s.requires_grad_(True)
        loss = kd_loss_torch(s, z_t, y, t=t, alpha=alpha, multi_label=multi_label)
        loss.backward()
        s_ref = s.detach().double().requires_grad_(True)
        ref = reference_kd_loss(s_ref, z_t, y, t, alpha, multi_label)
        ref.backward()
        where = f"{task} {kind} t={t} alpha={alpha}"
        assert torch.isfinite(loss), where
        assert torch.isfinite(s.grad).all(), where
        # The torch path computes in fp32: relative 1e-5 on a loss that can reach ~1e4.
        torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-5, atol=1e-6, msg=where)
        torch.testing.assert_close(s.grad.double(), s_ref.grad, rtol=1e-4, atol=1e-6, msg=where)
        closed = reference_grad(s.detach(), z_t, y, t, alpha, multi_label)
        torch.testing.assert_close(s_ref.grad, closed, rtol=1e-9, atol=1e-12, msg=where)


@pytest.mark.parametrize("multi_label", [False, True])
def test_torch_path_gradcheck(multi_label: bool) -> None:
    # float64 input stays float64 in kd_loss_torch, so gradcheck runs at its default tolerances.
    s, z_t, y = make_case("random", 3, 6, multi_label, seed=3, dtype=torch.float64)
    s = s.requires_grad_(True)
    for t, alpha in [(0.5, 0.2), (2.0, 0.0), (8.0, 1.0)]:
        fn = lambda x: kd_loss_torch(x, z_t, y, t=t, alpha=alpha, multi_label=multi_label)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (s,))


@pytest.mark.parametrize("multi_label", [False, True])
def test_teacher_gets_no_gradient(multi_label: bool) -> None:
    """The teacher's logits are a target: a teacher tensor that requires a gradient gets none, and the
    student's gradient is the reference's."""
    s, z_t, y = make_case("random", 4, 5, multi_label)
    s.requires_grad_(True)
    z_t.requires_grad_(True)
    loss = kd_loss(s, z_t, y, t=2.0, alpha=0.2, multi_label=multi_label)
    loss.backward()
    assert z_t.grad is None, "the teacher's logits got a gradient"
    s_ref = s.detach().double().requires_grad_(True)
    reference_kd_loss(s_ref, z_t.detach(), y, 2.0, 0.2, multi_label).backward()
    torch.testing.assert_close(s.grad.double(), s_ref.grad, rtol=1e-4, atol=1e-6)


def test_alpha_one_needs_no_teacher() -> None:
    s, z_t, y = make_case("random", 4, 5, False)
    s.requires_grad_(True)
    loss = kd_loss(s, None, y, t=2.0, alpha=1.0)
    ref = reference_kd_loss(s, z_t, y, 2.0, 1.0, False)
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-6, atol=1e-7)
    with pytest.raises(MedalError):
        kd_loss(s, None, y, t=2.0, alpha=0.5)


@pytest.mark.parametrize("t", [0.0, -1.0, float("nan")])
def test_bad_temperature_raises(t: float) -> None:
    s, z_t, y = make_case("random", 2, 3, False)
    with pytest.raises(MedalError, match="temperature"):
        kd_loss(s, z_t, y, t=t, alpha=0.5)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_bad_alpha_raises(alpha: float) -> None:
    s, z_t, y = make_case("random", 2, 3, False)
    with pytest.raises(MedalError, match="alpha"):
        kd_loss(s, z_t, y, t=1.0, alpha=alpha)


def test_bogus_kernel_env_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDAL_KD_KERNEL", "bogus")
    s, z_t, y = make_case("random", 2, 3, False)
    with pytest.raises(MedalError, match="MEDAL_KD_KERNEL"):
        kd_loss(s, z_t, y, t=1.0, alpha=0.5)


def test_backend_choice_without_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA tensors go to the kernel only where Triton is installed; forcing it without says so."""
    kd = importlib.import_module("medal.losses.kd_loss")  # the module: `medal.losses.kd_loss` the attribute is the function

    cuda_like = SimpleNamespace(is_cuda=True)
    monkeypatch.delenv("MEDAL_KD_KERNEL", raising=False)
    monkeypatch.setattr(kd, "_triton_available", lambda: True)
    assert kd._backend(cuda_like) == "triton"
    assert kd._backend(SimpleNamespace(is_cuda=False)) == "torch"
    monkeypatch.setattr(kd, "_triton_available", lambda: False)
    assert kd._backend(cuda_like) == "torch"
    monkeypatch.setenv("MEDAL_KD_KERNEL", "triton")
    with pytest.raises(MedalError, match="triton package"):
        kd._backend(cuda_like)


def test_forced_torch_backend_matches_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDAL_KD_KERNEL", "torch")
    s, z_t, y = make_case("random", 3, 4, True)
    loss = kd_loss(s, z_t, y, t=2.0, alpha=0.2, multi_label=True)
    torch.testing.assert_close(loss.double(), reference_kd_loss(s, z_t, y, 2.0, 0.2, True), rtol=1e-5, atol=1e-7)
