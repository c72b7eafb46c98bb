"""Durability helpers: atomic file writes, checksum manifests of finished outputs, and named crash points for the
kill-test harness.

A crash point is a no-op unless TRLHF_CRASH_AT names it ("judge" or "judge:3" = the 3rd time the point is
reached); then the process kills itself with SIGKILL, exactly like `kill -9` from outside, but at a point the
test can name. tests/test_kill.py reruns the same command afterwards and compares with an uninterrupted run.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from pathlib import Path

_hits: dict[str, int] = {}
MANIFEST = "MANIFEST.sha256.json"


class StateError(RuntimeError):
    """A run-directory file that is missing, truncated or changed since it was written: one line naming the file
    and how to recover (never silently replaced by a fresh one)."""


def crash_point(name: str) -> None:
    spec = os.environ.get("TRLHF_CRASH_AT")
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write to a temporary name in the same directory, fsync, then rename: readers (and a resumed run) see
    the old file or the new one, never half of one; a full disk leaves the old file intact."""
    path = Path(path)
    clear_stale(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clear_stale(path: str | Path) -> None:
    """Remove what a process killed while writing `path` left next to it: `.NAME.tmp-PID` (atomic_write_text),
    `NAME.tmp-PID` and `NAME.old-PID` (Policy.save), for PIDs that are no longer running or are this process.
    An `.old` directory with `path` missing is the previous checkpoint of a save killed between its two
    renames: it is put back."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    for p in path.parent.iterdir():
        for prefix, kind in ((f".{path.name}.tmp-", "tmp"), (f"{path.name}.tmp-", "tmp"), (f"{path.name}.old-", "old")):
            pid = p.name[len(prefix):] if p.name.startswith(prefix) else ""
            if pid.isdigit() and (int(pid) == os.getpid() or not pid_alive(int(pid))):
                if kind == "old" and not path.exists():
                    os.replace(p, path)
                elif p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                break


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(d: str | Path, paths: list[Path]) -> None:
    """Record size and sha256 of `paths` (files, or directories taken whole) in d/MANIFEST.sha256.json."""
    d = Path(d)
    files = sorted(f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())
    atomic_write_text(d / MANIFEST, json.dumps(
        {str(f.relative_to(d)): {"size": f.stat().st_size, "sha256": file_sha256(f)} for f in files}, indent=1))


def verify_manifest(d: str | Path, recover: str) -> bool:
    """False when d has no manifest; StateError naming the first file that is missing, of another size or of
    other content (a corruption of the same size included). `recover` says what to do about it."""
    d = Path(d)
    if not (d / MANIFEST).exists():
        return False
    try:
        entries = json.loads((d / MANIFEST).read_text())
    except (ValueError, UnicodeDecodeError):
        raise StateError(f"'{d / MANIFEST}' is corrupt; {recover}") from None
    for rel, want in entries.items():
        f = d / rel
        what = ("is missing" if not f.is_file() else
                f"has {f.stat().st_size} bytes, {want['size']} when written" if f.stat().st_size != want["size"] else
                "changed since it was written (checksum mismatch)" if file_sha256(f) != want["sha256"] else None)
        if what:
            raise StateError(f"'{f}' {what}; {recover}")
    return True
