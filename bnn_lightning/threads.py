"""How many CPU threads a run should use: the cores that other processes leave free right now.

PyTorch's OpenMP threads wait for each other by spinning, so a thread per core is only fast when
every core is free: on a 2-core machine with another CPU-bound process, training with two threads
ran 5-7x slower than with one (see the README's quickstart section). :func:`auto_threads` counts
the cores other processes keep busy over a short sample of the machine's CPU counters
(:func:`busy_cores`, read with ``psutil``, i.e. ``/proc/stat`` on Linux) and leaves them alone.

A sample, not the load average: the 1-minute load average decays over minutes, so right after a
``pip install`` it still counts the finished install and a fresh clone trained on one thread of
an idle 2-core machine (1.94 instead of 3.39 steps/s).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import psutil
import torch

__all__ = ["CpuSeconds", "auto_threads", "busy_cores", "machine_cpu_seconds"]

CpuSeconds = Callable[[], tuple[float, float]]
"""Returns cumulative ``(busy, total)`` CPU seconds of the machine, summed over its cores."""


def machine_cpu_seconds() -> tuple[float, float]:
    """Cumulative ``(busy, total)`` CPU seconds of every core since boot (``psutil.cpu_times``).

    Idle and I/O wait count as free; guest time is already inside user time, so it is not added.
    """
    times = psutil.cpu_times()
    fields = times._asdict()
    total = sum(v for k, v in fields.items() if k not in ("guest", "guest_nice"))
    free = fields["idle"] + fields.get("iowait", 0.0)
    return total - free, total


def busy_cores(
    interval: float = 1.0,
    read: CpuSeconds | None = None,
    own: Callable[[], float] | None = None,
    sleep: Callable[[float], None] | None = None,
    cores: int | None = None,
) -> float:
    """Cores kept busy by other processes, averaged over ``interval`` seconds from now.

    Args:
        interval: Length of the sample in seconds.
        read: Source of the machine's cumulative ``(busy, total)`` CPU seconds (default
            :func:`machine_cpu_seconds`; a fake in tests).
        own: CPU seconds used by this process, subtracted from the machine's busy time (default
            ``time.process_time``).
        sleep: Waits ``interval`` seconds (default ``time.sleep``).
        cores: Cores of the machine (default ``os.cpu_count()``).
    """
    read, own = read or machine_cpu_seconds, own or time.process_time
    sleep, cores = sleep or time.sleep, cores or os.cpu_count() or 1
    busy_before, total_before, own_before = *read(), own()
    sleep(interval)
    busy_after, total_after, own_after = *read(), own()
    elapsed = total_after - total_before  # core-seconds that passed on all cores
    if elapsed <= 0:
        return 0.0
    others = max(0.0, busy_after - busy_before - (own_after - own_before))
    return min(float(cores), cores * others / elapsed)


def auto_threads(interval: float = 1.0, max_threads: int | None = None) -> int:
    """Threads for this run: cores minus those other processes keep busy now (rounded), >= 1.

    A core counts as busy when other processes used at least half of one over the sample, so
    a machine running one other CPU-bound job on 2 cores gets 1 thread, an idle one gets 2.

    Args:
        interval: Length in seconds of the CPU sample (:func:`busy_cores`).
        max_threads: Upper bound (default ``torch.get_num_threads()``, one per physical core).
    """
    cores = os.cpu_count() or 1
    busy = busy_cores(interval, cores=cores)
    limit = max_threads or torch.get_num_threads()
    return max(1, min(limit, cores - int(busy + 0.5)))
