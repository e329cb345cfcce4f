"""PhaseTimes splits a fit's wall time into start-up, data, training and validation."""

from __future__ import annotations

from typing import Any

import pytest

from bnn_lightning.callbacks import timing
from bnn_lightning.callbacks.timing import PhaseTimes, format_seconds


def test_phases_follow_their_definitions(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake clock: process start 0, fit 10, setup done 30, a sanity validation 31-33,
    training 35-110 with validations 40-45 and 100-110, the end at 120."""
    now = [0.0]
    monkeypatch.setattr(timing.time, "time", lambda: now[0])
    times = PhaseTimes()
    times.process_start = 0.0
    trainer: Any = None

    def at(t: float, hook: str) -> None:
        now[0] = t
        getattr(times, hook)(trainer, None) if hook != "fit_started" else times.fit_started()

    at(10, "fit_started")
    now[0] = 30
    times.setup(trainer, None, "fit")  # type: ignore[arg-type]
    for t, hook in [
        (31, "on_validation_start"),
        (33, "on_validation_end"),
        (35, "on_train_start"),
        (40, "on_validation_start"),
        (45, "on_validation_end"),
        (100, "on_validation_start"),
        (110, "on_validation_end"),
        (110, "on_train_end"),
    ]:
        at(t, hook)
    phases = times.phases(end=120.0)
    assert phases == {
        "start-up": 10.0,
        "data": 20.0,
        "training": 110 - 35 - 15,  # the validations inside the epochs are not training
        "validation": 2 + 5 + 10,  # the sanity check is validation too
        "other": 120 - 10 - 20 - 60 - 17,
        "total": 120.0,
    }
    assert times.describe(end=120.0) == (
        "2m00s (start-up 10s, data 20s, training 1m00s, validation 17s, other 13s)"
    )


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0s"), (59.6, "1m00s"), (552.0, "9m12s")])
def test_format_seconds(seconds: float, text: str) -> None:
    assert format_seconds(seconds) == text
