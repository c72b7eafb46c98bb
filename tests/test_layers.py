"""The import layering is enforced by import-linter's contracts (pyproject.toml): they hold on the code, and a
planted violation (a low-level module importing the online loop) breaks them."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"
pytestmark = pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed (make venv installs it)")


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-cache"], cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, timeout=300)


def test_contracts_hold_and_a_planted_violation_breaks_them(tmp_path):
    for pkg in ("pipeline", "reward_sources", "eval"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    ok = lint(tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    with open(tmp_path / "pipeline" / "losses.py", "a") as fh:
        fh.write("\nfrom pipeline import online  # planted: a low-level part importing a stage\n")
    bad = lint(tmp_path)
    assert bad.returncode != 0
    assert "pipeline.losses is not allowed to import pipeline.online" in bad.stdout
