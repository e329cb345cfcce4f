"""``keep_freed_memory``: a large block freed and allocated again is not faulted in again, in
this process and in the processes it starts afterwards (``ddp_spawn`` workers)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bnn_lightning import cpu_memory

# Fill a fresh 64 MiB tensor (above glibc's largest mmap threshold, 32 MiB) and free it, as a
# training step does with its activations; after a warm-up (the heap grows until a freed block
# fits the next aligned request), count the page faults of three more rounds. With glibc's
# defaults every round maps fresh pages; with keep_freed_memory the rounds reuse the heap.
SCRIPT = """
import resource, sys, torch
from bnn_lightning.cpu_memory import keep_freed_memory
torch.set_num_threads(1)
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
size = 64 * 2**20
for _ in range(10):
    torch.empty(size, dtype=torch.uint8).fill_(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    torch.empty(size, dtype=torch.uint8).fill_(1)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES = 3 * 64 * 2**20 // 4096  # three rounds
# glibc's environment variables for M_MMAP_MAX and M_TRIM_THRESHOLD, read when a process starts
GLIBC_VARIABLES = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")


glibc_only = pytest.mark.skipif(
    cpu_memory._glibc() is None, reason="glibc's mallopt only (Linux, glibc)"
)


def _faults(mode: str, env: dict[str, str] | None = None) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True, env=env
    ).stdout.split()
    return out[0], int(out[1])


def _without_settings() -> dict[str, str]:
    """This process's environment without the settings an earlier ``keep_freed_memory`` put in."""
    return {k: v for k, v in os.environ.items() if k not in GLIBC_VARIABLES}


@glibc_only
def test_a_freed_block_is_reused_without_page_faults() -> None:
    assert _faults("default", _without_settings()) == ("False", pytest.approx(PAGES, rel=0.1))
    applied, faults = _faults("keep", _without_settings())
    assert applied == "True" and faults < PAGES // 20


@glibc_only
def test_processes_started_afterwards_keep_freed_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in GLIBC_VARIABLES:  # restored after the test, whatever it was
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    assert cpu_memory.keep_freed_memory()
    applied, faults = _faults("default")  # started with this process's environment
    assert applied == "False" and faults < PAGES // 20


def test_nothing_changes_without_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_memory, "_glibc", lambda: None)
    assert cpu_memory.keep_freed_memory() is False
