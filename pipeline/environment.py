"""The software stack a run directory was made with (environment.json), and a warning when it changes.

A build made again from the same recipe and seed on a fresh machine a day later did not give the same numbers (its
SFT's ROUGE-Lsum 0.666 where it had been 0.648), and nothing recorded which packages either machine had: the
package set was resolved afresh on each machine (only torch was pinned; `make venv` now installs constraints.txt's
versions), and another minor version of a numerical library is enough to move CPU results. Seeds make a run
reproducible on one stack only, and not every user installs through make, so the stack is written down next to
config.yaml, and a command that resumes a run on another stack says which packages differ instead of silently
mixing two.
"""
from __future__ import annotations

import json
import logging
import platform
from importlib import metadata
from pathlib import Path

from pipeline.durable import atomic_write_text

log = logging.getLogger("pipeline")
FILE = "environment.json"
# the packages whose numerics reach a result, and the ones that read or score text
PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "tokenizers", "sentencepiece", "datasets",
            "numpy", "scipy", "scikit-learn", "evaluate", "rouge-score", "bert-score", "sentence-transformers")


def current() -> dict:
    """No timestamps and no thread counts: a resumed run on the same machine writes the same bytes as an
    uninterrupted one (tests/test_kill.py compares every file)."""
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {"python": platform.python_version(), "machine": platform.machine(), "system": platform.system(),
            "packages": packages}


def differences(old: dict, new: dict) -> list[str]:
    """'name old -> new' for each entry of the stack that changed (packages by name, then the interpreter)."""
    out = []
    old_p, new_p = old.get("packages", {}), new.get("packages", {})
    for name in sorted(set(old_p) | set(new_p)):
        if old_p.get(name) != new_p.get(name):
            out.append(f"{name} {old_p.get(name)} -> {new_p.get(name)}")
    out += [f"{k} {old.get(k)} -> {new.get(k)}" for k in ("python", "machine", "system") if old.get(k) != new.get(k)]
    return out


def record(out: Path, env: dict | None = None, new_run: bool = True) -> list[str]:
    """Writes out/environment.json: the stack the directory was started with and the one of this command.
    Returns (and logs as a warning) what differs between the two; an unreadable file is started afresh. A run
    started before this file existed (`new_run` false, no file) keeps started_with null: its stack is unknown."""
    env = current() if env is None else env
    path = out / FILE
    started = env if new_run else None
    if path.exists():
        try:
            started = json.loads(path.read_text())["started_with"]  # null: made before the file existed
            if started is not None and not isinstance(started, dict):
                raise TypeError("started_with edited by hand")
        except (ValueError, UnicodeDecodeError, TypeError, KeyError):
            started = env
            log.warning("%s is unreadable; recording this command's stack as the run's own", path)
    changed = differences(started, env) if started is not None else []
    if changed:
        log.warning("%s was started with another software stack (%s): finished stages were made with the old one, "
                    "so the run may not equal one made with either alone", out, "; ".join(changed))
    atomic_write_text(path, json.dumps({"started_with": started, "this_command": env}, indent=1, sort_keys=True))
    return changed
