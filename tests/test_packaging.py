"""Packaging: one version source, PEP 561 marker, and a wheel that holds the whole package and its metadata."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import gradwise

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "gradwise"


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_version_has_one_source():
    project = _pyproject()["project"]
    assert "version" not in project and "version" in project["dynamic"]
    attr = _pyproject()["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "gradwise.__version__"
    assert importlib.metadata.version("gradwise") == gradwise.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?(\.dev\d+)?", gradwise.__version__)


def test_changelog_names_the_current_version():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## [{gradwise.__version__}]" in changelog


def test_py_typed_is_installed_with_the_package():
    assert importlib.resources.files("gradwise").joinpath("py.typed").is_file()


def _subpackages() -> list[str]:
    found = sorted(p.parent.relative_to(PACKAGE.parent).as_posix() for p in PACKAGE.rglob("__init__.py"))
    assert "gradwise" in found and len(found) > 1
    return found


def test_wheel_contents_and_metadata(tmp_path):
    """Builds the wheel from a copy of the source (the working tree is left untouched) in a few seconds."""
    import setuptools

    found = setuptools.__version__
    assert int(found.split(".")[0]) >= 77, f"building without isolation needs setuptools>=77 (test extra), not {found}"

    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(PACKAGE, src / "src" / "gradwise", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path / "wheelhouse"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
           "-w", str(out), str(src)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr

    (wheel,) = out.glob("gradwise-*.whl")
    assert wheel.name.startswith(f"gradwise-{gradwise.__version__}-py3-none-any")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        dist_info = f"gradwise-{gradwise.__version__}.dist-info"
        metadata = Parser().parsestr(zf.read(f"{dist_info}/METADATA").decode())
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()

    assert "gradwise/py.typed" in names
    assert "gradwise/state/_native8bit.c" in names  # the native 8-bit kernel's source, built on first use
    for package in _subpackages():
        assert f"{package}/__init__.py" in names, package
    shipped = {n for n in names if n.endswith(".py")}
    assert shipped == {p.relative_to(PACKAGE.parent).as_posix() for p in PACKAGE.rglob("*.py")}
    assert not any(n.startswith("tests/") or "__pycache__" in n for n in names)

    assert metadata["Name"] == "gradwise"
    assert metadata["Version"] == gradwise.__version__
    assert metadata["Requires-Python"] == _pyproject()["project"]["requires-python"]
    requires = metadata.get_all("Requires-Dist")
    assert any(re.match(r"torch\s*>=", r) for r in requires), requires
    extras = _pyproject()["project"]["optional-dependencies"]
    assert set(metadata.get_all("Provides-Extra")) == set(extras)
    for extra, deps in extras.items():
        for dep in deps:
            name = re.match(r"[A-Za-z0-9_.-]+", dep).group(0)
            assert any(r.startswith(name) and f'extra == "{extra}"' in r for r in requires), (extra, dep)
    assert re.search(r"^gradwise\s*=\s*gradwise\.cli:main$", entry_points, re.M)
