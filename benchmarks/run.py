"""Run every ``benchmarks/bench_*.py`` and write ``benchmarks/results/<date>.{json,md,png}``.

Each benchmark module exposes ``run(quick: bool) -> dict`` returning
``{"title": str, "rows": list[dict], "notes": str}``; ``rows`` become a markdown table.
``python benchmarks/run.py [--quick] [--only NAME ...]``.
"""
