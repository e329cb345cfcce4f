"""``keep_freed_memory``: a large block freed and allocated again is not faulted in again."""

from __future__ import annotations

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


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(cpu_memory._glibc() is None, reason="glibc's mallopt only (Linux, glibc)")
def test_a_freed_block_is_reused_without_page_faults() -> None:
    assert _faults("default") == ("False", pytest.approx(PAGES, rel=0.1))
    applied, faults = _faults("keep")
    assert applied == "True" and faults < PAGES // 20


def test_nothing_changes_without_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_memory, "_glibc", lambda: None)
    assert cpu_memory.keep_freed_memory() is False
