"""``threads: auto`` counts the cores other processes keep busy now, from a fake CPU-time source."""

from __future__ import annotations

import os
import time
from collections import namedtuple

import psutil
import pytest
import torch

from bnn_lightning.threads import auto_threads, busy_cores, machine_cpu_seconds

CpuTimes = namedtuple(
    "CpuTimes",
    "user nice system idle iowait irq softirq steal guest guest_nice",
)


class FakeMachine:
    """CPU counters of ``cores`` cores on which other processes keep ``busy`` cores running.

    ``sleep`` advances a fake clock; ``cpu_times`` answers like ``psutil.cpu_times()`` (busy time
    split over user and system, ``guest`` inside ``user`` as Linux reports it); ``own`` is this
    process's CPU time, ``own_busy`` cores of it.
    """

    def __init__(self, cores: int, busy: float, own_busy: float = 0.0, guest: float = 0.0):
        self.cores, self.busy, self.own_busy, self.guest = cores, busy, own_busy, guest
        self.clock = 1000.0  # seconds since boot

    def sleep(self, seconds: float) -> None:
        self.clock += seconds

    def own(self) -> float:
        return self.own_busy * self.clock

    def cpu_times(self) -> CpuTimes:
        used = (self.busy + self.own_busy) * self.clock
        idle = self.cores * self.clock - used
        guest = self.guest * self.clock
        return CpuTimes(0.7 * used, 0.0, 0.3 * used, 0.9 * idle, 0.1 * idle, 0, 0, 0, guest, 0)


def install(monkeypatch: pytest.MonkeyPatch, machine: FakeMachine) -> None:
    monkeypatch.setattr(psutil, "cpu_times", machine.cpu_times)
    monkeypatch.setattr(time, "sleep", machine.sleep)
    monkeypatch.setattr(time, "process_time", machine.own)
    monkeypatch.setattr(os, "cpu_count", lambda: machine.cores)
    monkeypatch.setattr(torch, "get_num_threads", lambda: machine.cores)


@pytest.mark.parametrize("busy", [0.0, 0.3, 1.0, 1.7])
def test_busy_cores_measures_the_other_processes(
    busy: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    machine = FakeMachine(cores=2, busy=busy, own_busy=0.2, guest=0.1)
    install(monkeypatch, machine)
    assert busy_cores(0.5) == pytest.approx(busy)


def test_busy_cores_with_explicit_sources() -> None:
    machine = FakeMachine(cores=4, busy=2.5)
    read = lambda: _counts(machine)
    got = busy_cores(1.0, read=read, own=lambda: 0.0, sleep=machine.sleep, cores=4)
    assert got == pytest.approx(2.5)


def _counts(machine: FakeMachine) -> tuple[float, float]:
    t = machine.cpu_times()
    busy = t.user + t.system
    return busy, busy + t.idle + t.iowait


@pytest.mark.parametrize(
    ("cores", "busy", "expected"),
    [(2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 1.0, 1), (2, 2.0, 1), (8, 3.2, 5)],
)
def test_auto_threads_leaves_the_busy_cores_alone(
    cores: int, busy: float, expected: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(monkeypatch, FakeMachine(cores, busy))
    assert auto_threads() == expected


def test_auto_threads_ignores_a_load_average_of_work_that_ended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Right after a ``pip install`` the 1-minute load is still high, the cores are idle now."""
    install(monkeypatch, FakeMachine(cores=2, busy=0.05))
    monkeypatch.setattr(os, "getloadavg", lambda: (1.9, 0.8, 0.3))
    assert auto_threads() == 2


def test_auto_threads_never_exceeds_torch_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, FakeMachine(cores=4, busy=0.0))
    assert auto_threads(max_threads=3) == 3


def test_machine_cpu_seconds_reads_this_machine() -> None:
    busy, total = machine_cpu_seconds()
    assert 0.0 <= busy <= total
    assert 0.0 <= busy_cores(0.05) <= (os.cpu_count() or 1)
