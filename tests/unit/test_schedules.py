"""The learning rate at every epoch equals the HolmesShuan collection's schedules."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from bnn_lightning.schedules import (
    LinearDecayLR,
    OneCycleLR,
    RunLength,
    WarmupCosineLR,
    WarmupMultiStepLR,
)


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
    make = lambda o: WarmupCosineLR(o, warmup_fraction=0.2, warmup_factor=0.1, total_steps=20)
    lrs = lr_per_epoch(make, 21, 1.0)
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


def lr_per_step(make: Callable[[Optimizer], LRScheduler], steps: int, lr: float) -> list[float]:
    return lr_per_epoch(make, steps, lr)


@pytest.mark.parametrize("strategy", ["linear", "cos"])
@pytest.mark.parametrize("total", [2, 7, 100, 703])
def test_one_cycle_formula(strategy, total):
    """Smith & Topin's one-cycle: from lr / div up to lr at round(pct * (T - 1)), then down to
    lr / (div * final_div) at the last step T - 1; held there after the run."""
    lr, pct, div, final_div = 4e-3, 0.15, 10.0, 1e3
    make = lambda o: OneCycleLR(o, pct, strategy, div, final_div, total_steps=total)
    lrs = lr_per_step(make, total + 2, lr)
    peak, last = round(pct * (total - 1)), total - 1

    def anneal(a: float, b: float, t: float) -> float:
        if strategy == "linear":
            return a + (b - a) * t
        return b + (a - b) * (1 + math.cos(math.pi * t)) / 2

    expected = [anneal(lr / div, lr, k / peak) for k in range(peak)]
    expected += [
        anneal(lr, lr / div / final_div, (k - peak) / (last - peak)) for k in range(peak, total)
    ]
    expected += [lr / div / final_div] * 2
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert lrs[peak] == pytest.approx(lr) and lrs[last] == pytest.approx(lr / div / final_div)


def test_one_cycle_peaks_at_each_groups_lr():
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in (1e-3, 5e-4)]
    opt = torch.optim.Adam(groups)
    sched = OneCycleLR(opt, pct_start=0.5, total_steps=11)
    for _ in range(5):
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3, 5e-4])


def test_linear_decay_is_reactnets_lambda():
    """Liu et al.'s ``LambdaLR(lambda step: 1.0 - step / epochs)``: lr / T last, then 0."""
    lrs = lr_per_step(lambda o: LinearDecayLR(o, total_steps=8), 10, 5e-4)
    assert lrs == pytest.approx([5e-4 * (1 - t / 8) for t in range(9)] + [0.0], abs=1e-15)


def test_length_schedules_need_the_run_length():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    with pytest.raises(ValueError, match="OneCycleLR needs the run's length"):
        OneCycleLR(opt)
    with RunLength(lambda: 702):
        assert OneCycleLR(opt).total_steps == 702
        assert WarmupCosineLR(opt, warmup_fraction=0.1).total_steps == 702
        with pytest.raises(ValueError, match=r"total_steps=1000 but the run has 702 .* remove"):
            LinearDecayLR(opt, total_steps=1000)


def test_state_restores_the_length_it_was_built_with():
    """A resume continues the curve in its checkpoint, whatever the new run would compute."""
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = OneCycleLR(opt, total_steps=20)
    for _ in range(7):
        opt.step()
        sched.step()
    opt2 = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched2 = OneCycleLR(opt2, total_steps=50)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    assert sched2.total_steps == 20
    for _ in range(13):
        for o, s in ((opt, sched), (opt2, sched2)):
            o.step()
            s.step()
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
