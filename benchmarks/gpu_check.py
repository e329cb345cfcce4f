"""``make gpu-check``: the project measured on one GPU in under 8 minutes, in one command.

Writes ``benchmarks/results/gpu-<date>.{md,json}`` (and the parts' output to
``runs/gpu-check/gpu-<date>.log``) with:

1. the GPU, its driver, and the torch, CUDA and cuDNN versions;
2. the result of ``pytest -m gpu tests/gpu`` (the CUDA variants of the device tests);
3. training-step images/s of the binary ResNet-18 (CIFAR stem, width 64, batch 512) and of the
   same net with its quantizers off, in bf16 autocast + channels_last, eager and compiled, and
   the binary / float time ratio;
4. the data path's images/s: ``configs/cifar10/gpu.yaml``'s training loader, transfer and batch
   hooks, through a ``Trainer`` whose step does nothing;
5. a real run of ``configs/cifar10/gpu.yaml`` (a fully binary ResNet-18 on the CIFAR-10
   archive, 5,000 images held out) for as many epochs as 5 minutes of training allow, estimated
   from 3 and 4 (``trainer.max_time`` stops it at the limit regardless), with the validation
   top-1 after each epoch and the wall time.

Every part runs in its own process with a time box, and all of them within ``--budget`` seconds
(472 by default): a part that overruns is stopped and reported with what it had measured, and the
real run gets the time that is left, at most 5 minutes of training. The CIFAR-10 archive
``cifar10-jpeg-train.tar.gz`` is looked for in ``$BNN_DATA_DIR``, ``.gpu/data`` and ``data``;
it is extracted and decoded in the background while the GPU parts run. On a machine without the
package index, the packages that its Python lacks are installed from ``.gpu/wheels`` into
``.gpu/site`` first (``--bundle``, i.e. ``make gpu-bundle``, fills ``.gpu``; README, "GPU").

``python benchmarks/gpu_check.py --dry-run`` runs every part at toy size on the CPU (a tiny
network, a generated image tree, compiled with ``aot_eager``) and writes its report to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gpu_setup import ROOT, bundle, ensure_packages, find_archive

HERE = Path(__file__).resolve().parent
TRAIN_SECONDS = 300.0  # the real run's training time when the budget allows
RUN_OVERHEAD_S = 20.0  # start-up, data loading and the last validation of the real run
BOXES = {"tests": 120.0, "throughput": 120.0, "data": 30.0}  # seconds, full size
DRY_BOXES = {"tests": 240.0, "throughput": 240.0, "data": 120.0}


def environment() -> dict[str, Any]:
    """GPU name, memory and driver; torch, CUDA, cuDNN, Lightning and Python versions; CPU."""
    import platform

    import lightning
    import torch

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "cpu_cores": os.cpu_count(),
        "gpu": None,
        "driver": None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gb"] = round(props.total_memory / 1e9, 1)
        info["compute_capability"] = f"{props.major}.{props.minor}"
        try:
            query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            out = subprocess.run(query, capture_output=True, text=True, timeout=20, check=True)
            info["driver"] = out.stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            info["driver"] = None
    return info


class Runner:
    """Runs parts in their own process groups with time boxes; their output goes to ``log``."""

    def __init__(self, log: Path, dry_run: bool, deadline: float) -> None:
        self.log, self.dry_run, self.deadline = log, dry_run, deadline
        log.parent.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled"}
        if dry_run:  # toy sizes on a CPU that others may share: one thread (README, threads)
            self.env["OMP_NUM_THREADS"] = "1"

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def start(self, command: list[str], output: Path | None = None) -> subprocess.Popen:
        """Start ``command`` in its own process group, its output to ``output`` or the log."""
        with self.log.open("a") as log:
            log.write(f"\n$ {' '.join(command)}\n")
        with (output or self.log).open("a") as stream:
            return subprocess.Popen(
                command, cwd=ROOT, env=self.env, stdout=stream, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def wait(self, proc: subprocess.Popen, box: float) -> tuple[int | None, float]:
        """Exit code (None when stopped at ``box`` seconds) and seconds taken."""
        start = time.monotonic()
        try:
            code: int | None = proc.wait(timeout=max(box, 1.0))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
        return code, time.monotonic() - start

    def part(self, name: str, box: float, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run ``gpu_check.py --part name`` for at most ``box`` seconds; its result dict."""
        box = min(box, self.left())
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "part.json"
            command = [sys.executable, str(Path(__file__)), "--part", name, "--part-out", str(out)]
            command += ["--part-args", json.dumps(extra or {})]
            command += ["--dry-run"] if self.dry_run else []
            print(f"[gpu-check] {name} (at most {box:.0f} s) ...", flush=True)
            code, seconds = self.wait(self.start(command), box)
            result = json.loads(out.read_text()) if out.is_file() else {}
        status = "ok" if code == 0 else ("stopped at its time box" if code is None else "failed")
        print(f"[gpu-check] {name}: {status} in {seconds:.0f} s", flush=True)
        return {**result, "status": status, "seconds": seconds, "box_s": box}

    def tests(self, box: float) -> dict[str, Any]:
        """``pytest -m gpu tests/gpu``: the JUnit XML report, or its output if it was stopped."""
        from gpu_report import parse_junit, parse_pytest_output

        box = min(box, self.left())
        with tempfile.TemporaryDirectory() as tmp:
            xml, output = Path(tmp) / "junit.xml", Path(tmp) / "pytest.out"
            command = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/gpu", "-v", "-rfE"]
            command += ["-p", "no:cacheprovider", f"--junitxml={xml}"]
            print(f"[gpu-check] tests (at most {box:.0f} s) ...", flush=True)
            code, seconds = self.wait(self.start(command, output), box)
            text = output.read_text(errors="replace") if output.is_file() else ""
            with self.log.open("a") as log:
                log.write(text)
            result = parse_junit(xml) if xml.is_file() else parse_pytest_output(text)
        status = {None: "stopped at its time box", 0: "ok", 5: "no tests ran"}.get(code, "failed")
        print(f"[gpu-check] tests: {status} in {seconds:.0f} s", flush=True)
        return {**result, "status": status, "exit_code": code, "seconds": seconds, "box_s": box}


def data_args(archive: Path | None, dry_tmp: Path | None) -> list[str]:
    """Overrides of ``gpu.yaml`` shared by the parts: the data, and toy sizes for a dry run."""
    if dry_tmp is None:
        return ["--data.init_args.root", str(archive)] if archive else []
    from gpu_parts import write_toy_tree

    tree = dry_tmp / "tree"
    if not tree.exists():
        write_toy_tree(tree)
    return [
        "--data.init_args.root", str(tree),
        "--data.init_args.cache_dir", str(dry_tmp / "cache"),
        "--data.init_args.val_size", "20",
        "--data.init_args.batch_size", "16",
        "--model.net.init_args.width", "8",
        "--trainer.accelerator", "cpu",
        "--trainer.default_root_dir", str(dry_tmp / "run"),
        "--trainer.logger.init_args.save_dir", str(dry_tmp / "run"),
    ]  # fmt: skip


def run_check(args: argparse.Namespace) -> int:
    """All parts in order, each time-boxed; then the report."""
    from gpu_report import estimate_epochs, write_report

    start = time.monotonic()
    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H%M")
    stem = ("gpu-dry-run-" if args.dry_run else "gpu-") + stamp
    runner = Runner(ROOT / "runs" / "gpu-check" / f"{stem}.log", args.dry_run, start + args.budget)
    boxes = DRY_BOXES if args.dry_run else BOXES
    results: dict[str, Any] = {"date": stamp, "dry_run": args.dry_run, "budget_s": args.budget}
    results["environment"] = environment()
    with tempfile.TemporaryDirectory() as tmp:
        dry_tmp = Path(tmp) if args.dry_run else None
        archive = None if args.dry_run else find_archive()
        results["archive"] = str(archive) if archive else None
        shared = data_args(archive, dry_tmp)
        have_data = args.dry_run or archive is not None
        prep = None
        if have_data:  # CPU work (extraction, decoding) while the GPU parts run
            cpu = ["--trainer.accelerator", "cpu"]
            extra = json.dumps({"data_args": [*shared, *cpu]})
            command = [sys.executable, str(Path(__file__)), "--part", "prepare"]
            prep = runner.start([*command, "--part-args", extra])
        results["tests"] = runner.tests(boxes["tests"])
        results["throughput"] = runner.part("throughput", boxes["throughput"])
        if prep is not None:
            code, seconds = runner.wait(prep, runner.left() - RUN_OVERHEAD_S - 60)
            results["prepare"] = {"exit_code": code, "waited_s": seconds}
        if have_data and results.get("prepare", {}).get("exit_code") == 0:
            results["data"] = runner.part("data", boxes["data"], {"data_args": shared})
            train_s = 30.0 if args.dry_run else min(TRAIN_SECONDS, runner.left() - RUN_OVERHEAD_S)
            epochs = 1 if args.dry_run else estimate_epochs(results, train_s)
            minutes, seconds = divmod(int(train_s), 60)
            run_args = [*shared, "--trainer.max_epochs", str(epochs)]
            run_args += ["--trainer.max_time", f"00:00:{minutes:02d}:{seconds:02d}"]
            run_args += ["--checkpoint.every_n_epochs", str(epochs)]
            run_args += ["--trainer.enable_progress_bar", "false"]
            results["run"] = {"train_budget_s": train_s, "planned_epochs": epochs}
            if train_s >= 60 or args.dry_run:
                part = runner.part("run", runner.left(), {"run_args": run_args})
                results["run"].update(part)
            else:
                results["run"]["status"] = f"skipped: {train_s:.0f} s left for training"
        else:
            why = "no CIFAR-10 archive" if not have_data else "preparing the data failed"
            results["data"] = results["run"] = {"status": f"skipped: {why} (see README, GPU)"}
    results["wall_s"] = time.monotonic() - start
    paths = write_report(results, args.out / stem)
    print(f"[gpu-check] wrote {', '.join(map(str, paths))}; log {runner.log}", flush=True)
    failed = [k for k in ("tests", "throughput", "data", "run") if results[k]["status"] != "ok"]
    return 1 if failed else 0


def run_part(args: argparse.Namespace) -> int:
    """One part in this process (called by :func:`run_check` through a subprocess)."""
    import gpu_parts

    extra = json.loads(args.part_args or "{}")
    out: Path = args.part_out
    sys.argv = sys.argv[:1]  # the parts' LightningCLI gets its arguments as a list
    sizes = gpu_parts.DRY if args.dry_run else gpu_parts.FULL
    if args.dry_run:
        import torch

        torch.set_num_threads(1)

    def save(result: dict[str, Any]) -> None:
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, default=str))
        os.replace(tmp, out)

    if args.part == "prepare":  # its result goes to the log (nothing waits for a file)
        print(json.dumps(gpu_parts.prepare(extra["data_args"])), flush=True)
    elif args.part == "throughput":
        gpu_parts.throughput(sizes, save)
    elif args.part == "data":
        gpu_parts.data_path(sizes, extra["data_args"], save)
    elif args.part == "run":
        gpu_parts.real_run(extra["run_args"], save)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="every part at toy size on CPU")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="report folder")
    parser.add_argument("--budget", type=float, default=472.0, help="seconds for all parts")
    parser.add_argument("--bundle", action="store_true", help="fill .gpu/ (make gpu-bundle)")
    parser.add_argument("--part", choices=["prepare", "throughput", "data", "run"])
    parser.add_argument("--part-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--part-args", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bundle:
        for path in bundle():
            print(f"[gpu-check] {path} ({path.stat().st_size / 2**20:.1f} MiB)")
        return 0
    ensure_packages()
    sys.path.insert(0, str(HERE))
    return run_part(args) if args.part else run_check(args)


if __name__ == "__main__":
    raise SystemExit(main())
