"""The wheel: its version is ``bnn_lightning.__version__``, it ships ``py.typed``, and the
installed libraries meet the lower bounds it states."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import bnn_lightning

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """A wheel built offline from a copy of the source tree (the checkout stays clean)."""
    src = tmp_path_factory.mktemp("src")
    shutil.copytree(
        ROOT / "bnn_lightning", src / "bnn_lightning", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    command = [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q"]
    result = subprocess.run(
        [*command, "-w", str(src / "dist"), str(src)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = (src / "dist").glob("*.whl")
    return zipfile.ZipFile(path)


def metadata(wheel: zipfile.ZipFile) -> dict[str, list[str]]:
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    message = Parser().parsestr(wheel.read(name).decode())
    return {key: message.get_all(key) or [] for key in ("Version", "Requires-Dist")}


def test_the_version_is_written_once(wheel: zipfile.ZipFile) -> None:
    assert metadata(wheel)["Version"] == [bnn_lightning.__version__]


def test_the_wheel_ships_py_typed(wheel: zipfile.ZipFile) -> None:
    assert "bnn_lightning/py.typed" in wheel.namelist()


def test_the_installed_libraries_meet_the_stated_bounds(wheel: zipfile.ZipFile) -> None:
    requirements = [Requirement(r) for r in metadata(wheel)["Requires-Dist"]]
    required = {r.name: r for r in requirements if r.marker is None}
    for name in ("torch", "torchvision", "lightning", "jsonargparse"):
        assert required[name].specifier.contains(version(name)), (name, version(name))
    assert str(required["torch"].specifier) == ">=2.7"  # recompile_limit (packed.py)
