"""CA-MKD's multi-teacher loss: reduces to the single-teacher KD loss, and trusts the confident teacher."""

from __future__ import annotations

import pytest
import torch

from medal.losses.ca_mkd import ca_mkd_loss, teacher_weights
from medal.losses.kd_loss import kd_loss_torch
from medal.runtime.errors import MedalError

B, C = 16, 7


def _batch(multi_label: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(B, C, generator=g) * 2
    teacher = torch.randn(B, C, generator=g) * 3
    target = torch.randint(0, 2, (B, C), generator=g).float() if multi_label else torch.randint(0, C, (B,), generator=g)
    return student, teacher, target


@pytest.mark.parametrize("multi_label", [False, True])
@pytest.mark.parametrize("t,alpha", [(1.0, 0.0), (2.0, 0.2), (4.0, 0.5), (8.0, 1.0)])
def test_one_teacher_is_plain_kd(multi_label, t, alpha):
    s, z, y = _batch(multi_label)
    expect = kd_loss_torch(s, z, y, t=t, alpha=alpha, multi_label=multi_label)
    got = ca_mkd_loss(s, z[None], y, t=t, alpha=alpha, multi_label=multi_label)
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("multi_label", [False, True])
def test_identical_teachers_are_plain_kd(multi_label):
    s, z, y = _batch(multi_label, seed=1)
    expect = kd_loss_torch(s, z, y, t=2.0, alpha=0.2, multi_label=multi_label)
    got = ca_mkd_loss(s, z.expand(3, B, C), y, t=2.0, alpha=0.2, multi_label=multi_label)
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(teacher_weights(z.expand(3, B, C), y, multi_label), torch.full((3, B), 1 / 3))


@pytest.mark.parametrize("multi_label", [False, True])
def test_confident_teacher_weighs_more(multi_label):
    _, _, y = _batch(multi_label, seed=2)
    onehot = y if multi_label else torch.nn.functional.one_hot(y, C).float()
    right = (onehot * 2 - 1) * 4.0  # large logits on the true label(s)
    vague = (onehot * 2 - 1) * 0.5  # right, but unsure
    wrong = -right
    w = teacher_weights(torch.stack([vague, right, wrong]), y, multi_label)
    assert w.shape == (3, B)
    torch.testing.assert_close(w.sum(0), torch.ones(B))
    assert (w[1] > w[0]).all() and (w[0] > w[2]).all()


@pytest.mark.parametrize("multi_label", [False, True])
def test_gradient_is_finite_and_skips_the_weights(multi_label):
    s, z, y = _batch(multi_label, seed=3)
    s.requires_grad_(True)
    teachers = torch.stack([z, z * 10, -z * 50]).requires_grad_(True)  # large logits must not overflow
    loss = ca_mkd_loss(s, teachers, y, t=2.0, alpha=0.2, multi_label=multi_label)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    # gradient reaches the teacher logits only through the KL's p_k, never through the weights
    w = teacher_weights(teachers, y, multi_label)
    assert not w.requires_grad


def test_bad_inputs_are_one_sentence():
    s, z, y = _batch(False)
    with pytest.raises(MedalError, match="temperature t must be > 0"):
        ca_mkd_loss(s, z[None], y, t=0.0, alpha=0.2)
    with pytest.raises(MedalError, match=r"alpha must lie in \[0, 1\]"):
        ca_mkd_loss(s, z[None], y, t=2.0, alpha=1.5)
    with pytest.raises(MedalError, match="CA-MKD needs"):
        ca_mkd_loss(s, z, y, t=2.0, alpha=0.2)
