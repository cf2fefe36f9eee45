"""The distribution as installed: its name, its one version, its command, and package data that covers every
file the package reads (`.ci/wheel` builds and installs the real wheel; this catches a gap in seconds)."""

from __future__ import annotations

import importlib.metadata as md
import re
from pathlib import Path

import silo

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "silo"


def _project_table(name: str) -> str:
    """One ``[table]`` of pyproject.toml as text (the file is read, not the installed metadata)."""
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(rf"^\[{re.escape(name)}\]\n(.*?)(?=^\[)", text, re.S | re.M)
    assert match, f"pyproject.toml has no [{name}]"
    return match.group(1)


def test_distribution_name_version_and_command():
    meta = md.metadata("silo-restore")
    assert meta["Name"] == "silo-restore"
    assert md.version("silo-restore") == silo.__version__
    project = _project_table("project")
    assert 'name = "silo-restore"' in project and re.search(r'^dynamic = \["version"\]', project, re.M)
    assert not re.search(r"^version\s*=", project, re.M)  # written once, in silo/_version.py
    assert 'version = {attr = "silo._version.__version__"}' in _project_table("tool.setuptools.dynamic")
    (script,) = [ep for ep in md.entry_points(group="console_scripts") if ep.name == "silo"]
    assert script.value == "silo.cli:main" and script.dist.name == "silo-restore"


def test_package_data_covers_every_file_the_package_ships():
    patterns = re.findall(r'"([^"]+)"', _project_table("tool.setuptools.package-data").split("silo =", 1)[1])
    covered = {p for pattern in patterns for p in PACKAGE.glob(pattern) if p.is_file()}
    data = {
        p
        for p in PACKAGE.rglob("*")
        if p.is_file()
        and p.suffix not in (".py", ".pyc")
        and "__pycache__" not in p.parts
        and not any(part.startswith(".") for part in p.relative_to(PACKAGE).parts)
    }
    assert data, "the package ships no data files?"
    missing = sorted(str(p.relative_to(PACKAGE)) for p in data - covered)
    assert not missing, f"not in [tool.setuptools.package-data], so missing from the wheel: {missing[:10]}"
    for needed in ("weights/silo-tiny/model_card.json", "degradations/tasks/sr4.yaml", "data/silo_tiny_manifest.json"):
        assert PACKAGE / needed in covered, needed
