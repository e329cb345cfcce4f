"""The summary table of a ``make bench`` run: five performance measurements against their targets.

Reads the rows of the benchmark modules (``binary_vs_float``, ``compiled``, ``data``, ``export``,
``quickstart``) and returns one line per measurement: what, the value, the target and whether it
is met (``None`` where no target is set). Timing ratios come from the medians; ``best`` is
the same ratio from the fastest repeat of each side, the one least disturbed by other processes
on a shared machine. A measurement whose benchmark did not run (``--only``, ``--quick``, an error)
is reported as not measured instead of failing the summary.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Any

Line = dict[str, Any]
NOT_MEASURED = "not measured"


def _rows(results: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return list(results["benchmarks"].get(name, {}).get("rows", []))


def line(
    item: str,
    measure: str,
    value: float | None,
    unit: str,
    target: str = "—",
    ok: Callable[[float], bool] | None = None,
    best: float | None = None,
) -> Line:
    """One summary line; ``unit`` is ``x`` (a ratio), ``%`` (a fraction) or a word."""
    met = None if value is None or ok is None else bool(ok(value))
    return {
        "item": item,
        "measure": measure,
        "value": _show(value, unit),
        "number": value,
        "best": "—" if best is None else _show(best, unit),
        "target": target,
        "met": met,
    }


def _show(value: float | None, unit: str) -> str:
    if value is None:
        return NOT_MEASURED
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "%":
        return f"{100 * value:.1f}%"
    return f"{value:.3g} {unit}"


def _median_ms(row: dict[str, Any]) -> float | None:
    return row.get("median_ms")


def _fastest_ms(row: dict[str, Any]) -> float | None:
    """The fastest repeat in ms: the first number of the row's ``spread_ms`` (``"min-max"``)."""
    head = str(row.get("spread_ms", "")).split("-")[0]
    try:
        return float(head)
    except ValueError:
        return None


def _ratio(
    top: dict[str, Any] | None,
    bottom: dict[str, Any] | None,
    of: Callable[[dict[str, Any]], float | None],
) -> float | None:
    """``of(top) / of(bottom)``, None when either is missing."""
    a, b = (of(top), of(bottom)) if top and bottom else (None, None)
    return a / b if a is not None and b else None


BF16, FP32_CL = "bf16 + channels_last", "fp32 + channels_last"
BF16_CONV = "binary, bf16 forward conv"  # the binary step with its int8 forward conv turned off


def _setting(row: dict[str, Any]) -> str:
    """``fp32 eager`` / ``bf16 + channels_last`` / ``fp32 + channels_last`` / ``compiled`` from a
    training-step row (fp32 + channels_last: the quickstart's setting on a CPU without bf16)."""
    setting = str(row.get("setting", ""))
    if "compiled" in setting:
        return "compiled"
    if "bf16 autocast" in setting:
        return BF16
    return FP32_CL if "channels_last" in setting else "fp32 eager"


def train_step_rows(results: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """ResNet-18 training-step rows keyed by ``(setting, mode)``."""
    rows = [r for r in _rows(results, "binary_vs_float") if "ResNet-18" in str(r.get("setting"))]
    rows += _rows(results, "compiled")
    return {(_setting(r), r["mode"]): r for r in rows}


def quickstart_setting(rows: dict[tuple[str, str], dict[str, Any]]) -> str:
    """The quickstart's eager setting in these rows: bf16 + channels_last where the CPU has
    native bf16, else fp32 + channels_last (``precision: auto``)."""
    return FP32_CL if (FP32_CL, "binary") in rows else BF16


# Binary / float step time: the quickstart's setting (bf16 autocast + channels_last, or fp32 +
# channels_last on a CPU without native bf16) and the compiled one at most 1.05x, fp32 eager at
# most 1.10x; the quickstart's binary step at least 3x the images/s of plain fp32 eager float
# training; binary peak memory at most 0.8x the float one.
TIME_LIMITS = {"fp32 eager": 1.10, "quickstart": 1.05, "compiled": 1.05}
SPEEDUP_TARGET = 3.0
MEMORY_TARGET = 0.8


def item1(results: dict[str, Any]) -> list[Line]:
    """Binary / float step time per setting; the quickstart setting's speed-up over fp32 eager."""
    rows = train_step_rows(results)
    default = quickstart_setting(rows)
    lines = []
    for setting, limit in TIME_LIMITS.items():
        setting = default if setting == "quickstart" else setting
        binary, float_ = rows.get((setting, "binary")), rows.get((setting, "float"))
        measure = f"ResNet-18 train step time, binary / float, {setting}"
        ratio, best = _ratio(binary, float_, _median_ms), _ratio(binary, float_, _fastest_ms)
        ok = functools.partial(operator.ge, limit)
        lines.append(line("1", measure, ratio, "x", f"<= {limit:.2f}x", ok, best))
    int8, bf16_conv = rows.get((default, "binary")), rows.get((default, BF16_CONV))
    if bf16_conv is not None:  # the int8 forward convolution's gain, where it runs
        measure = f"ResNet-18 train step time, binary, int8 / bf16 forward conv, {default}"
        ratio, best = _ratio(int8, bf16_conv, _median_ms), _ratio(int8, bf16_conv, _fastest_ms)
        lines.append(line("1", measure, ratio, "x", best=best))
    eager = rows.get(("fp32 eager", "float"))  # plain fp32 eager float training
    for setting, target in ((default, f">= {SPEEDUP_TARGET:g}x"), ("compiled", "—")):
        row = rows.get((setting, "binary"))  # same batch: images/s ratio = inverse time ratio
        speedup, best = _ratio(eager, row, _median_ms), _ratio(eager, row, _fastest_ms)
        check = functools.partial(operator.le, SPEEDUP_TARGET) if target != "—" else None
        suffix = " (the quickstart's setting)" if setting != "compiled" else ""
        measure = f"binary images/s, {setting}{suffix} / fp32 eager float"
        lines.append(line("1", measure, speedup, "x", target, check, best))
    return lines


def item2(results: dict[str, Any]) -> list[Line]:
    """Peak memory of one training step, binary / float, per eager setting."""
    rows = train_step_rows(results)
    lines = []
    for setting in ("fp32 eager", quickstart_setting(rows)):
        binary = rows.get((setting, "binary"), {})
        lines.append(
            line(
                "2",
                f"ResNet-18 train step peak memory, binary / float, {setting}",
                binary.get("memory_ratio"),
                "x",
                f"<= {MEMORY_TARGET:.2f}x",
                functools.partial(operator.ge, MEMORY_TARGET),
            )
        )
    return lines


def item3(results: dict[str, Any]) -> list[Line]:
    """Best loader images/s over training-step images/s, per data pipeline."""
    best: dict[str, float] = {}
    for row in _rows(results, "data"):
        if "data/step" in row:
            best[row["what"]] = max(best.get(row["what"], 0.0), row["data/step"])
    if not best:
        return [line("3", "data pipeline images/s / training step images/s", None, "x")]
    return [
        line(
            "3",
            f"{what}: loader / training step images/s (best workers)",
            ratio,
            "x",
            ">= 2x",
            lambda v: v >= 2.0,
        )
        for what, ratio in best.items()
    ]


def item4(results: dict[str, Any]) -> list[Line]:
    """Export size ratios and packed conv speed against float."""
    rows = {r.get("item"): r for r in _rows(results, "export")}
    lines = [
        line(
            "4",
            f"export size, fp32 / packed file, {name}",
            rows.get(name, {}).get("fp32/file"),
            "x",
        )
        for name in ("resnet18 imagenet (1000 classes)", "resnet18 cifar (10 classes)")
    ]
    total = rows.get("all binary convs of ResNet-18", {})
    measure = "packed XNOR conv speed / float conv, all binary 3x3 convs, batch 1, compiled"
    lines.append(line("4", measure, total.get("compiled_vs_float"), "x"))
    return lines


def item5(results: dict[str, Any]) -> list[Line]:
    """Wall time and final validation top-1 of ``make train``."""
    result = results["benchmarks"].get("quickstart", {})
    row = (result.get("rows") or [{}])[0]
    suffix = f" (from {result['reused_from']})" if result.get("reused_from") else ""
    return [
        line("5", f"make train wall time{suffix}", row.get("wall_min"), "min"),
        line("5", f"make train final validation top-1{suffix}", row.get("val/acc_top1"), "%"),
    ]


ITEMS: list[Callable[[dict[str, Any]], list[Line]]] = [item1, item2, item3, item4, item5]


def summarize(results: dict[str, Any]) -> list[Line]:
    """Every summary line, item by item."""
    return [entry for item in ITEMS for entry in item(results)]


def images_per_second(results: dict[str, Any]) -> dict[str, float]:
    """ResNet-18 training-step images/s per ``setting · mode``, for the summary's bar chart."""
    return {f"{s} · {m}": r["items_per_s"] for (s, m), r in train_step_rows(results).items()}
