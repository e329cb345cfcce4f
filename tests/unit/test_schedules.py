"""The learning rate at every epoch equals the HolmesShuan collection's schedules."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from bnn_lightning.schedules import WarmupCosineLR, WarmupMultiStepLR


def lr_per_epoch(make: Callable[[Optimizer], LRScheduler], epochs: int, lr: float) -> list[float]:
    """The lr used in each epoch, stepping the scheduler once per epoch as Lightning does."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=lr)
    scheduler = make(optimizer)
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def step_decay(lr: float, epoch: int, milestones: list[int], gamma: float) -> float:
    """HolmesShuan's ``adjust_learning_rate``: times gamma for every milestone reached."""
    return lr * gamma ** sum(epoch >= m for m in milestones)


@pytest.mark.parametrize(
    ("lr", "milestones", "gamma", "end"),
    [
        (1e-3, [150, 250, 320], 0.2, 350),  # CIFAR-100
        (1e-3, [40, 60, 70], 0.1, 75),  # ImageNet
        (2e-4, [40, 60, 70], 0.1, 75),  # ImageNet stage 2
    ],
)
def test_step_decay_every_epoch(lr, milestones, gamma, end):
    lrs = lr_per_epoch(lambda o: WarmupMultiStepLR(o, milestones, gamma), end, lr)
    expected = [step_decay(lr, e, milestones, gamma) for e in range(end)]
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert lrs[-1] == pytest.approx(lr * gamma ** len(milestones))


def test_one_stage_constant_warmup():
    """5 epochs at 1e-3, then 4e-3 (HolmesShuan one-stage), then ImageNet step decay."""
    make = lambda o: WarmupMultiStepLR(o, [40, 60, 70], 0.1, warmup_epochs=5, warmup_factor=0.25)
    lrs = lr_per_epoch(make, 75, 4e-3)
    expected = [1e-3] * 5 + [step_decay(4e-3, e, [40, 60, 70], 0.1) for e in range(5, 75)]
    assert lrs == pytest.approx(expected, rel=1e-9)


def test_one_stage_linear_warmup():
    make = lambda o: WarmupMultiStepLR(
        o, [40, 60, 70], 0.1, warmup_epochs=5, warmup_mode="linear", warmup_factor=0.25
    )
    lrs = lr_per_epoch(make, 75, 4e-3)
    ramp = [4e-3 * (0.25 + 0.75 * e / 5) for e in range(5)]
    expected = ramp + [step_decay(4e-3, e, [40, 60, 70], 0.1) for e in range(5, 75)]
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert lrs[0] == pytest.approx(1e-3)


def test_warmup_cosine_anneals_to_zero():
    lrs = lr_per_epoch(lambda o: WarmupCosineLR(o, 20, warmup_iters=4, warmup_factor=0.1), 21, 1.0)
    assert lrs[:4] == pytest.approx([0.1 + 0.9 * e / 4 for e in range(4)])
    cosine = [0.5 * (1 + math.cos(math.pi * (e - 4) / 16)) for e in range(4, 21)]
    assert lrs[4:] == pytest.approx(cosine, abs=1e-9)
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_scheduler_state_round_trips():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=4e-3)
    sched = WarmupMultiStepLR(opt, [8], 0.1, warmup_epochs=3, warmup_mode="linear")
    for _ in range(5):
        opt.step()
        sched.step()
    opt2 = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=4e-3)
    sched2 = WarmupMultiStepLR(opt2, [8], 0.1, warmup_epochs=3, warmup_mode="linear")
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    for _ in range(5):
        for o, s in ((opt, sched), (opt2, sched2)):
            o.step()
            s.step()
        assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    assert opt.param_groups[0]["lr"] == pytest.approx(4e-4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"milestones": [60, 40]}, "increase"),
        ({"milestones": [5, 40], "warmup_epochs": 5}, "exceed"),
        ({"milestones": [40], "warmup_epochs": 5, "warmup_factor": 0.0}, "warmup_factor"),
        ({"milestones": [40], "warmup_epochs": 5, "warmup_mode": "cubic"}, "warmup_mode"),
    ],
)
def test_bad_settings_are_rejected(kwargs, match):
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    with pytest.raises(ValueError, match=match):
        WarmupMultiStepLR(opt, **kwargs)
