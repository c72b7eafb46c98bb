"""Issue 16, by class: every bad value or option refused in one line before any stage runs; judge answers out of
range are failures; win-rate intervals stay inside [0, 1]; corrupt state refused, never replaced; one run per
directory; a changed recipe under --force redoes what it changed; secrets never reach the run directory; a full
disk inside a checkpoint write is one line."""
from __future__ import annotations

import json
import math
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.__main__ import main
from pipeline.config import ConfigError, describe, load_recipe

TINY = ["data.n_examples=60", "data.eval_size=6", "data.test_size=6", "policy.name=shape:t5-tiny", "sft.steps=2",
        "sft.batch_size=8", "sft.eval_examples=0", "online.iterations=1", "online.prompts_per_iteration=4",
        "online.k=3", "online.max_new_tokens=6", "online.epochs=1", "online.batch_size=4", "eval.n_prompts=4",
        "eval.seeds=[0]", "eval.max_new_tokens=6"]


def cli(capsys, *argv) -> tuple[int, str]:
    rc = main(list(argv))
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "\r" not in line]
    return rc, err[-1] if err else ""


@pytest.fixture
def recipe_file(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(f"name: bad\nrun_dir: {tmp_path / 'run'}\n")
    return str(p)


# ------------------------------------------------------------------ ranges, declared with each field


@pytest.mark.parametrize("override, message", [
    ("data.eval_size=-5", "'data.eval_size' must be >= 0, got -5"),
    ("data.test_size=-1", "'data.test_size' must be >= 0, got -1"),
    ("sft.batch_size=0", "'sft.batch_size' must be >= 1, got 0"),
    ("online.batch_size=-4", "'online.batch_size' must be >= 1, got -4"),
    ("online.gen_batch_size=0", "'online.gen_batch_size' must be >= 1, got 0"),
    ("sft.steps=0", "'sft.steps' must be >= 1, got 0"),
    ("online.iterations=0", "'online.iterations' must be >= 1, got 0"),
    ("online.epochs=0", "'online.epochs' must be >= 1, got 0"),
    ("sft.lr=0", "'sft.lr' must be > 0, got 0.0"),
    ("online.lr=-1e-4", "'online.lr' must be > 0, got -0.0001"),
    ("sft.copy_lr=0", "'sft.copy_lr' must be > 0, got 0.0"),
    ("online.max_new_tokens=0", "'online.max_new_tokens' must be >= 1, got 0"),
    ("eval.max_new_tokens=0", "'eval.max_new_tokens' must be >= 1, got 0"),
    ("eval.seeds=[]", "'eval.seeds' must not be empty"),
    ("table.seeds=[]", "'table.seeds' must not be empty"),
    ("eval.n_prompts=0", "'eval.n_prompts' must be >= 1, got 0"),
    ("online.beta=0", "'online.beta' must be > 0, got 0.0"),
    ("online.beta=-0.1", "'online.beta' must be > 0, got -0.1"),
    ("online.beta=.nan", "'online.beta' must be > 0, got nan"),
    ("online.temperature=0", "'online.temperature' must be > 0, got 0.0"),
    ("eval.temperature=-1", "'eval.temperature' must be >= 0, got -1.0"),
    ("online.k=1", "'online.k' must be >= 2, got 1"),
    ("online.max_judge_failure_rate=1.5", "'online.max_judge_failure_rate' must be >= 0 and <= 1, got 1.5"),
    ("data.world.paraphrase=2", "'data.world.paraphrase' must be >= 0 and <= 1, got 2.0"),
    ("policy.lora.dropout=1", "'policy.lora.dropout' must be >= 0 and < 1, got 1.0"),
    ("source_models=[{label: big, sft: {steps: -3}}]", "'source_models[0].sft.steps' must be >= 1, got -3"),
    ("table.jobs=0", "'table.jobs' must be >= 1, got 0"),
])
def test_out_of_range_values_are_refused_before_any_stage_runs(recipe_file, tmp_path, capsys, override, message):
    assert cli(capsys, "run", recipe_file, override) == (2, f"error: {message}")
    assert not (tmp_path / "run").exists()


def test_ipo_with_zero_beta_is_refused_at_load():
    with pytest.raises(ConfigError, match=r"^'online.beta' must be > 0, got 0.0$"):
        load_recipe(None, ["online.loss=ipo", "online.beta=0"])


def test_help_lists_the_ranges():
    lines = describe()
    assert "online.beta: KL coefficient (default 0.1; > 0)" in lines
    assert any(line.startswith("eval.seeds:") and line.endswith("; non-empty)") for line in lines)


@pytest.mark.parametrize("overrides, message", [
    (["data.n_examples=10", "data.eval_size=5", "data.test_size=5"],
     "data.eval_size (5) + data.test_size (5) leave no training rows of data.n_examples (10) articles"),
    (["data.test_size=0"], "the eval stage compares policies on held-out test prompts, but data.test_size is 0: "
                           "set it to at least 1, or stop earlier with --stage online"),
])
def test_cross_field_rules_are_refused_before_any_stage_runs(recipe_file, tmp_path, capsys, overrides, message):
    assert cli(capsys, "run", recipe_file, *overrides) == (2, f"error: {message}")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ component options, before any stage


@pytest.mark.parametrize("override, message", [
    ("judge.params={persona: grumpy}",
     "judge: unknown oracle persona 'grumpy'; known: default, facts_first, concise, cautious, coverage"),
    ("eval.judge={name: oracle, params: {teacher: wise}}",
     "eval.judge: unknown oracle teacher 'wise'; known: expert, default, novice"),
    ("judge.params={temperature: hot}",
     "judge.params: an option has the wrong type ('<' not supported between instances of 'str' and 'int')"),
    ("online.sources=[{name: rouge, varient: x}]",
     "online.sources[0]: rouge: unknown option 'varient'; valid: against, name, variant. Did you mean 'variant'?"),
    ("online.sources=[{name: loglik, model: 'run:big', redcue: sum}]",
     "online.sources[0]: loglik: unknown option 'redcue'; valid: batch_size, beta, minus_reference, model, name, pmi, "
     "reduce. Did you mean 'reduce'?"),
    ("online.sources=[{name: loglik, model: 'run:big'}]",
     "source model 'run:big' is not in source_models (labels: none)"),
    ("online.sources=[{name: reward_model, modle: x}]",
     "online.sources[0]: reward_model: unknown option 'modle'; valid: batch_size, device, max_length, model, name, "
     "pack_tokens, trust_remote_code. Did you mean 'model'?"),
    ("online.sources=[{name: python, function: 'nope_pkg.mod:f'}]",
     "online.sources[0]: python: cannot import module 'nope_pkg.mod' (No module named 'nope_pkg')"),
    ("online.sources=[{name: python, function: 'reward_sources.examples:oracle_utility', kwargs: {data_dir: d, "
     "bogus: 1}}]",
     "online.sources[0]: python: 'reward_sources.examples:oracle_utility' cannot be called with kwargs ['bogus', "
     "'data_dir'] (got an unexpected keyword argument 'bogus')"),
    ("judge={name: python, params: {function: 'reward_sources.oracle:OracleJudge', kwargs: {colour: red}}}",
     "judge: python judge: 'reward_sources.oracle:OracleJudge' cannot be called with kwargs ['colour'] (got an "
     "unexpected keyword argument 'colour')"),
    ("judge={name: python, params: {function: 'reward_sources.oracle'}}",
     "judge: python judge: function must look like 'package.module:callable', got 'reward_sources.oracle'"),
    ("judge={name: pairwise_http, params: {base_url: 'http://127.0.0.1:1/v1', model: m, concurency: 2}}",
     "judge: pairwise_http: unknown option 'concurency'; valid: api_key_env, base_url, concurrency, deadline, "
     "max_document_words, max_tokens, model, name, retries, timeout. Did you mean 'concurrency'?"),
    ("judge={name: pairwise_http, params: {base_url: 'http://127.0.0.1:1/v1', model: m, retries: -1}}",
     "judge: pairwise_http: retries must be a int >= 0, got -1"),
    ("judge={name: pairwise_http, params: {model: m}}",
     "judge: pairwise_http: 'base_url' is required (e.g. base_url: http://localhost:8000/v1, model: the served "
     "model's name)"),
    ("judge={name: pairwise_llm, params: {batch_size: 0}}", "judge: pairwise_llm: batch_size must be an integer >= 1, "
                                                             "got 0"),
    ("online.sources=[{label: x}]", "online.sources[0] needs a 'name', e.g. {name: rouge}; got {'label': 'x'}"),
])
def test_component_options_are_refused_before_any_stage_runs(recipe_file, tmp_path, capsys, override, message):
    assert cli(capsys, "run", recipe_file, override) == (2, f"error: {message}")
    assert not (tmp_path / "run").exists()


def test_a_bad_fixed_arm_is_refused_before_any_stage_runs(recipe_file, tmp_path, capsys):
    assert cli(capsys, "run", recipe_file, "online.sources=[{name: rouge}]", "online.n_pool=4",
               "online.selector={name: fixed, params: {arm: rogue}}") == (
        2, "error: selector 'fixed': arm 'rogue' is not a source; known: rouge")
    assert not (tmp_path / "run").exists()


def test_a_python_module_failing_at_import_is_one_line(recipe_file, tmp_path, capsys, monkeypatch):
    (tmp_path / "broken_judge_mod.py").write_text("raise RuntimeError('no GPU here\\nsecond line')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cli(capsys, "run", recipe_file, "judge={name: python, params: {function: 'broken_judge_mod:make'}}") == (
        2, "error: judge: python judge: importing module 'broken_judge_mod' failed: RuntimeError: no GPU here")


def test_a_python_source_that_raises_is_one_line():
    from reward_sources import RegistryError, build_source

    score = build_source({"name": "python", "function": "math:sqrt"})
    with pytest.raises(RegistryError) as e:
        score(["d"], ["r"], ["s"])
    assert str(e.value).startswith("python source 'math:sqrt' raised TypeError: ")


# ------------------------------------------------------------------ judge answers and intervals


class WildPairwise:
    kind, name = "pairwise", "wild"

    def compare(self, rows, a, b, seed=0):
        return [{"hi": 7.0, "lo": -3.0, "ok": 1.0, "tie": 0.5}[x] for x in a]


def test_pairwise_answers_outside_0_1_are_failures_never_scores(tmp_path):
    from pipeline.labels import LabelStore

    store = LabelStore(tmp_path / "l.sqlite")
    rows = [{"id": str(i)} for i in range(4)]
    assert store.pairwise(WildPairwise(), rows, ["hi", "lo", "ok", "tie"], ["b"] * 4, 1) == [None, None, 1.0, 0.5]
    assert store.db.execute("SELECT COUNT(*) FROM labels WHERE answer IS NULL").fetchone()[0] == 2
    # an out-of-range answer stored by an older version is asked again, not served
    store.db.execute("UPDATE labels SET answer = 7.0 WHERE prompt_id = '2'")
    store.db.commit()
    assert store.pairwise(WildPairwise(), rows[2:3], ["ok"], ["b"], 1) == [1.0] and store.asked == 5


def test_win_rate_intervals_stay_inside_0_1():
    from eval.winrate import head_to_head, mean_ci

    for outcomes in ([0.0] * 29 + [1.0], [1.0] * 30, [0.0, 0.5, 1.0] * 10, [1.0, 1.0, 0.0]):
        m, lo, hi = mean_ci(outcomes)
        assert 0 <= lo <= m <= hi <= 1, (outcomes, lo, m, hi)
    assert mean_ci([0.0] * 29 + [1.0]) == mean_ci([0.0] * 29 + [1.0])  # a rerun prints the same table
    _, summary = head_to_head("a", "b", 1, {0: [0.0] * 19 + [1.0], 1: [0.0] * 20})
    assert 0 <= summary["ci_low"] <= summary["win_rate"] <= summary["ci_high"] <= 1
    assert all(math.isnan(v) for v in mean_ci([1.0])[1:])


# ------------------------------------------------------------------ a run directory, end to end


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """data -> SFT -> one online iteration -> eval of a t5-tiny, once for this module (seconds)."""
    d = tmp_path_factory.mktemp("finished")
    (d / "r.yaml").write_text("name: hard\n")
    assert main(["run", str(d / "r.yaml"), f"run_dir={d / 'run'}", *TINY]) == 0
    return d


def _copy(finished_run, tmp_path) -> tuple[str, Path]:
    run = tmp_path / "run"
    shutil.copytree(finished_run / "run", run)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: hard\nrun_dir: {run}\n")
    config = json.loads(json.dumps(__import__("yaml").safe_load((run / "config.yaml").read_text())))
    config["run_dir"] = str(run)
    (run / "config.yaml").write_text(__import__("yaml").safe_dump(config, sort_keys=False))
    return str(recipe), run


def test_a_resume_of_a_finished_run_is_silent(finished_run, tmp_path, capsys):
    recipe, run = _copy(finished_run, tmp_path)
    assert main(["run", recipe, *TINY]) == 0
    assert all((run / d / "MANIFEST.sha256.json").exists() for d in ("sft", "online/iter_1"))
    assert set(json.loads((run / "stages.json").read_text())) == {"data", "sft", "sources", "online", "eval"}


def test_an_empty_label_store_after_a_finished_iteration_is_refused(finished_run, tmp_path, capsys):
    recipe, run = _copy(finished_run, tmp_path)
    (run / "eval" / "DONE").unlink()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{run / 'labels.sqlite'}{suffix}").unlink(missing_ok=True)
    (run / "labels.sqlite").write_bytes(b"")
    rc, line = cli(capsys, "run", recipe, *TINY)
    n = json.loads((run / "online" / "iter_1" / "metrics.json").read_text())["labels_spent_total"]
    assert (rc, line) == (1, f"error: label store '{run / 'labels.sqlite'}' holds 0 labels, but iter_1 finished with "
                             f"{n}: it was replaced or truncated; restore it from a backup (or delete "
                             f"{run / 'online'} to redo every iteration, asking every label again)")
    assert (run / "labels.sqlite").stat().st_size == 0 or sqlite3.connect(run / "labels.sqlite").execute(
        "SELECT COUNT(*) FROM labels").fetchone()[0] == 0


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_corrupt_label_store_is_refused_not_replaced(finished_run, tmp_path, capsys, damage):
    recipe, run = _copy(finished_run, tmp_path)
    (run / "eval" / "DONE").unlink()
    db = run / "labels.sqlite"
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a database" * 100)
    before = db.read_bytes()
    rc, line = cli(capsys, "run", recipe, *TINY)
    assert rc == 1 and line.startswith(f"error: label store '{db}' is corrupt (") and "restore it from a backup" in line
    assert db.read_bytes() == before  # never replaced by a fresh store


@pytest.mark.parametrize("damage", ["same_size", "truncate"])
def test_a_damaged_checkpoint_is_refused_with_the_file_named(finished_run, tmp_path, capsys, damage):
    recipe, run = _copy(finished_run, tmp_path)
    (run / "eval" / "DONE").unlink()
    weights = run / "online" / "iter_1" / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "same_size":
        data[-100] ^= 0xFF  # one flipped byte inside a tensor: it would load, with another weight
    else:
        data = data[: len(data) // 2]
    weights.write_bytes(bytes(data))
    rc, line = cli(capsys, "run", recipe, *TINY)
    what = ("changed since it was written (checksum mismatch)" if damage == "same_size"
            else f"has {len(data)} bytes, {len(data) * 2} when written")
    assert (rc, line) == (1, f"error: '{weights}' {what}; delete '{run / 'online' / 'iter_1'}' and rerun the same "
                             "command to redo iter_1 (and the iterations after it)")


def test_a_second_run_on_the_same_directory_is_refused(finished_run, tmp_path, capsys):
    recipe, run = _copy(finished_run, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import time; from filelock import FileLock; "
                               f"lock = FileLock({str(run / '.lock')!r}); lock.acquire(); print('held', flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        assert cli(capsys, "run", recipe, *TINY) == (
            1, f"error: run directory '{run}' is in use by another run; wait for it to finish, or set run_dir to "
               "another directory")
        assert time.monotonic() - t0 < 10  # at once, not after waiting
    finally:
        holder.kill()
        holder.wait()
    assert main(["run", recipe, *TINY]) == 0  # released with its holder


@pytest.mark.parametrize("override, redone", [
    ("eval.seeds=[1]", ["eval"]),
    ("online.beta=0.3", ["online", "eval"]),
    ("data.n_examples=70", ["data", "sft", "online", "eval"]),  # no source models: none to retrain
])
def test_force_redoes_exactly_the_stages_whose_config_changed(finished_run, tmp_path, capsys, override, redone):
    recipe, run = _copy(finished_run, tmp_path)
    rc, line = cli(capsys, "run", recipe, *TINY, override)
    key = override.split("=")[0]
    assert (rc, line) == (2, f"error: recipe changed since {run} was started ({key}); --force redoes "
                             f"{', '.join(redone)}; rerun with --force to accept, or set run_dir to a new directory")
    stamps = {p: p.stat().st_mtime_ns for p in run.glob("*/DONE")}
    assert main(["run", recipe, *TINY, override, "--force"]) == 0
    out = capsys.readouterr().out
    changed = {p.parent.name for p, t in stamps.items() if p.stat().st_mtime_ns != t}
    assert changed == set(redone)
    if key == "eval.seeds":
        assert "seeds [1]" in out
    if key == "data.n_examples":
        assert "data: 58 train / 6 eval / 6 test rows" in out
    assert main(["run", recipe, *TINY, override]) == 0  # the new recipe is now the run's own


def test_raising_iterations_with_force_keeps_the_finished_iteration(finished_run, tmp_path, capsys):
    recipe, run = _copy(finished_run, tmp_path)
    done = (run / "online" / "iter_1" / "DONE").stat().st_mtime_ns
    (run / "online" / "DONE").unlink()  # as test_bad_inputs does: the finished stage is reopened by iteration 2
    assert main(["run", recipe, *TINY, "online.iterations=2", "--force", "--stage", "online"]) == 0
    assert (run / "online" / "iter_1" / "DONE").stat().st_mtime_ns == done
    assert (run / "online" / "iter_2" / "DONE").exists()


# ------------------------------------------------------------------ secrets


@pytest.mark.parametrize("override, where", [
    ("judge={name: python, params: {function: 'reward_sources.oracle:OracleJudge', kwargs: {openai_api_key: sk-1}}}",
     "judge.params.kwargs.openai_api_key"),
    ("online.sources=[{name: python, function: 'math:fsum', kwargs: {hf_token: hf_abc}}]",
     "online.sources[0].kwargs.hf_token"),
])
def test_secret_looking_kwargs_are_refused_before_anything_is_written(recipe_file, tmp_path, capsys, override, where):
    rc, line = cli(capsys, "run", recipe_file, override)
    assert rc == 2 and line.startswith(f"error: {where}: a literal secret in a recipe is refused")
    assert "sk-1" not in line and "hf_abc" not in line and not (tmp_path / "run").exists()


def test_the_runner_refuses_a_secret_even_without_the_cli(tmp_path):
    from pipeline.runner import run

    recipe = load_recipe(None, [f"run_dir={tmp_path / 'run'}",
                                "judge={name: python, params: {function: 'x:y', kwargs: {password: hunter2}}}"])
    with pytest.raises(ConfigError, match=r"^recipe\.judge\.params\.kwargs\.password: a literal secret"):
        run(recipe, until="data")
    assert not (tmp_path / "run" / "config.yaml").exists()


# ------------------------------------------------------------------ a full disk


def test_a_full_disk_inside_safetensors_is_one_line(finished_run, tmp_path, capsys, monkeypatch):
    """safetensors wraps ENOSPC in its own SafetensorError; the message below is its format."""
    from safetensors import SafetensorError
    from transformers import T5ForConditionalGeneration

    recipe, run = _copy(finished_run, tmp_path)

    def full(self, *a, **k):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
                              'left on device" })')

    monkeypatch.setattr(T5ForConditionalGeneration, "save_pretrained", full)
    assert cli(capsys, "run", recipe, *TINY, "online.iterations=2", "--force") == (
        1, "error: no space left on device writing a checkpoint; finished stages, checkpoints and labels are kept: "
           "free some space and rerun the same command to resume")


# ------------------------------------------------------------------ the hostile-user pass (tests/hostile_pass.py)


@pytest.mark.parametrize("content, message", [
    (None, "recipe '{p}' is a directory, not a YAML file"),
    (b"name: caf\xe9\n", "recipe '{p}' is not UTF-8 text (byte 0xe9 at offset 9); re-save it as UTF-8"),
    (b"", "recipe '{p}' is empty; give at least a name (python -m pipeline help lists every key)"),
    (b"# a comment only\n", "recipe '{p}' is empty; give at least a name (python -m pipeline help lists every key)"),
    (b"name: x\nsft:\n  steps: 2\nsft:\n  batch_size: 4\n",
     "recipe '{p}': key 'sft' is given twice in one mapping (line 4); YAML keeps only the last, so the first would "
     "be dropped silently: merge them into one"),
])
def test_hostile_recipe_files_are_one_line(tmp_path, capsys, content, message):
    p = tmp_path / "r.yaml"
    p.mkdir() if content is None else p.write_bytes(content)
    assert cli(capsys, "run", str(p), f"run_dir={tmp_path / 'run'}") == (2, f"error: {message.format(p=p)}")
    assert not (tmp_path / "run").exists()  # an empty recipe used to run the 30,000-article default


@pytest.mark.parametrize("override, message", [
    ("sft.seed=-1", "'sft.seed' must be >= 0 and <= 4294967295, got -1"),
    ("online.seed=1099511627776", "'online.seed' must be >= 0 and <= 4294967295, got 1099511627776"),
    ("table.seeds=[-1]", "'table.seeds' must be >= 0 and <= 4294967295 and non-empty, got [-1]"),
    ("online.beta=1e400", "'online.beta' must be a finite number, got inf"),
    ("eval.temperature=.inf", "'eval.temperature' must be a finite number, got inf"),
    ("online.k=1000000000000000000000000000000", "online.k + online.n_pool is 1000000000000000000000000000000: at "
                                                 "most 16384 samples per prompt are drawn"),
    ("name=", "'name' must not be empty"),
    ("eval.baseline=initiall", "'eval.baseline' must be one of sft, initial, got 'initiall' (did you mean "
                               "'initial'?)"),
])
def test_hostile_values_are_refused_at_load(recipe_file, tmp_path, capsys, override, message):
    assert cli(capsys, "run", recipe_file, override) == (2, f"error: {message}")
    assert not (tmp_path / "run").exists()


DUAL = "online.selector={name: dual_active, params: %s}"
LOWRANK = "online.selector={name: lowrank, params: %s}"
ROUGE = "online.sources=[{name: rouge}]"


@pytest.mark.parametrize("overrides, message", [
    ([ROUGE, DUAL % "{teachers: [{name: oracle, cost: [1]}]}"],
     "dual_active: teacher cost must be a number > 0, got [1]"),
    ([ROUGE, DUAL % "{teachers: [{name: oracle, params: [1]}]}"],
     "dual_active: teacher params must be a mapping, got [1]"),
    ([ROUGE, DUAL % "{teachers: [{name: oracle, params: {persona: grumpy}}]}"],
     "dual_active: teacher 'oracle': unknown oracle persona 'grumpy'; known: default, facts_first, concise, cautious, "
     "coverage"),
    ([ROUGE, DUAL % "{persona: grumpy}"],
     "dual_active: unknown persona 'grumpy'; known: default, facts_first, concise, cautious, coverage"),
    ([ROUGE, LOWRANK % "{population: {default: [1]}}"],
     "lowrank: population weights must be finite numbers >= 0 with a positive sum, got {'default': [1]}"),
    ([ROUGE, LOWRANK % "{target: {default: .nan}}"],
     "lowrank: target weights must be finite numbers >= 0 with a positive sum, got {'default': nan}"),
    (["judge.params={weights: {invnted: 5}}"],
     "judge: unknown oracle weight(s) ['invnted']; valid: distractor, event, invented, length, length_relative, "
     "max_words, number, per_entity, person, place, role"),
    (["judge.params={weights: {person: x}}"], "judge: oracle weights must be finite numbers (true/false for "
                                              "per_entity, length_relative), got {'person': 'x'}"),
    (["judge.params={temperature: .nan}"], "judge: oracle temperature must be a finite number >= 0, got nan"),
    (["judge.params={persona: [default]}"], "judge: unknown oracle persona '['default']'; known: default, "
                                            "facts_first, concise, cautious, coverage"),
    (["online.sources=[{name: loglik, model: 5}]"],
     "online.sources[0]: loglik: model must be a name or a mapping of ModelConfig fields, got int"),
    (["online.sources=[{name: loglik, model: m, minus_reference: 'yes'}]"],
     "online.sources[0]: loglik: minus_reference must be true or false, got 'yes'"),
    (["online.sources=[{name: evaluate, metric: ./nope_metric.py}]"],
     "online.sources[0]: evaluate: metric script './nope_metric.py' does not exist"),
    (["online.sources=[{name: rouge}, {name: rouge}]"],
     "online.sources: sources ['rouge'] appear twice; give each a distinct 'label'"),
    (["online.sources=[{name: rouge, label: self}]", "online.n_pool=2"],
     "online.sources[0].label must be a string other than 'self' (the no-transfer arm), got 'self'"),
    ([ROUGE, "online.selector={name: shared, params: {encoder: /nonexistent/enc}}"],
     "selector 'shared': encoder '/nonexistent/enc' is not a model directory (no config.json); leave it unset for "
     "the packaged all-MiniLM-L6-v2"),
])
def test_hostile_options_are_refused_before_any_stage_runs(recipe_file, tmp_path, capsys, overrides, message):
    assert cli(capsys, "run", recipe_file, "online.n_pool=2", "online.replace_num=1", *overrides) == (
        2, f"error: {message}")
    assert not (tmp_path / "run").exists()


def test_hostile_run_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: bad\nrun_dir: {tmp_path / 'afile' / 'run'}\n")
    assert cli(capsys, "run", str(recipe)) == (
        2, f"error: run_dir '{tmp_path / 'afile' / 'run'}': '{tmp_path / 'afile'}' is a file, not a directory; set "
           "run_dir to a directory")


def test_hostile_table_seeds_and_baseline_before_any_stage(tmp_path):
    from pipeline.table import make_table, methods

    recipe = load_recipe(None, [f"run_dir={tmp_path / 'run'}", "table.seeds=[0]", "table.aa_seed_offset=-1"])
    with pytest.raises(ConfigError, match=r"^table.aa_seed_offset=-1 gives the A/A run training seed\(s\) \[-1\], "
                                          r"outside 0 .. 4294967295$"):
        methods(recipe)
    recipe = load_recipe(None, [f"run_dir={tmp_path / 'run'}", "table.aa=false", "table.baseline=nobody"])
    with pytest.raises(ConfigError, match=r"^table.baseline 'nobody' is not a method of the table"):
        make_table(recipe)
    assert not (tmp_path / "run").exists()  # not after data, SFT and the source models


@pytest.mark.parametrize("damage, outcome", [
    ("eval_done_garbage", 0), ("winrates_md_deleted", 0), ("stages_json_garbage", 1), ("config_yaml_garbage", 1),
    ("metrics_json_garbage", 1), ("test_jsonl_truncated", 1),
])
def test_hostile_damaged_run_files_are_redone_or_one_line(finished_run, tmp_path, capsys, damage, outcome):
    recipe, run = _copy(finished_run, tmp_path)
    if damage == "eval_done_garbage":  # redone: the DONE marker only says which iterations eval covered
        (run / "eval" / "DONE").write_text("{not json")
    elif damage == "winrates_md_deleted":  # redone, instead of failing on every rerun to print it
        (run / "eval" / "winrates.md").unlink()
    elif damage == "stages_json_garbage":
        (run / "stages.json").write_text("{{{")
    elif damage == "config_yaml_garbage":
        (run / "config.yaml").write_text("name: [unclosed\n")
    elif damage == "metrics_json_garbage":
        (run / "eval" / "DONE").unlink()
        (run / "online" / "iter_1" / "metrics.json").write_text("garbage")
    else:
        (run / "eval" / "DONE").unlink()
        test = run / "data" / "test.jsonl"
        test.write_text(test.read_text()[:-40])
    rc, line = cli(capsys, "run", recipe, *TINY)
    assert rc == outcome
    if damage == "test_jsonl_truncated":
        assert line.startswith(f"error: '{run / 'data' / 'test.jsonl'}' is corrupt (Unterminated string")
        assert line.endswith(f"; delete '{run / 'data'}' and rerun the same command to redo the data stage")
    elif outcome == 0:
        assert json.loads((run / "eval" / "DONE").read_text()) == {"iterations": 1}
        assert (run / "eval" / "winrates.md").exists()
    else:
        assert line == {
            "stages_json_garbage": f"error: '{run / 'stages.json'}' is corrupt; delete it and rerun (finished stages "
                                   "are then compared with config.yaml)",
            "config_yaml_garbage": f"error: '{run / 'config.yaml'}' is corrupt; delete it to take this recipe as the "
                                   "run's own (stages.json still decides which finished stages it makes stale)",
            "metrics_json_garbage": f"error: '{run / 'online' / 'iter_1' / 'metrics.json'}' is corrupt; delete "
                                    f"'{run / 'online' / 'iter_1'}' and rerun the same command to redo iter_1 (and "
                                    "the iterations after it)",
        }[damage]


def test_hostile_eval_baseline_initial_is_used_not_ignored(finished_run, tmp_path, capsys):
    recipe, run = _copy(finished_run, tmp_path)
    online = (run / "online" / "iter_1" / "DONE").stat().st_mtime_ns
    assert main(["run", recipe, *TINY, "eval.baseline=initial", "--force"]) == 0
    assert "| hard@iter1 | initial | 1 |" in (run / "eval" / "winrates.md").read_text()  # was silently vs sft
    assert (run / "online" / "iter_1" / "DONE").stat().st_mtime_ns == online  # only eval redone


def test_hostile_eval_utility_errors_are_one_line(finished_run, tmp_path, capsys):
    from eval.utility import main as utility

    _, run = _copy(finished_run, tmp_path)
    sft = f"sft={run / 'sft' / 'model'}"

    def err(*argv):
        rc = utility([str(run), *argv])
        return rc, capsys.readouterr().err.strip().splitlines()[-1]

    assert err(sft, "--prompts", "0") == (2, "error: --prompts must be >= 1")
    assert err(sft, "--temperature", "-1") == (2, "error: --temperature must be >= 0 (0 = greedy) and finite")
    assert err(sft, "--bt-temperature", "nan") == (2, "error: --bt-temperature must be >= 0 (0 = noise-free) and "
                                                      "finite")
    rc, line = err(f"x={run / 'data'}", "--prompts", "2", "--samples", "1")  # a directory that holds no model
    assert rc == 2 and line.startswith("error: ") and "Traceback" not in line
    for split in ("test", "eval"):  # rows without the world's facts: no utility to measure
        p = run / "data" / f"{split}.jsonl"
        p.write_text("".join(json.dumps({k: v for k, v in json.loads(x).items() if k != "facts"}) + "\n"
                             for x in p.read_text().splitlines()))
    assert err(sft, "--prompts", "2") == (2, f"error: {run}: the oracle's utility needs held-out rows with the "
                                             "synthetic world's planted facts (data.source=synthetic)")
    (run / "config.yaml").write_text("name: [unclosed\n")
    rc, line = err(sft, "--prompts", "2")
    assert rc == 2 and line.startswith(f"error: recipe '{run / 'config.yaml'}' is not valid YAML")


def test_hostile_console_shows_warnings_only(tmp_path):
    """absl (rouge-score) installs a basicConfig console handler at its first log line; at INFO it printed every
    INFO line and the traceback that io_error_line logs for run.log."""
    import logging

    from pipeline.runner import setup_logging

    console = logging.StreamHandler()  # what logging.basicConfig() adds
    logging.getLogger().addHandler(console)
    setup_logging(tmp_path)
    assert console.level == logging.WARNING


def test_hostile_command_lines_are_one_line(recipe_file, tmp_path, capsys):
    from eval.world_report import main as world_report
    from pipeline.table import main as table

    assert world_report([]) == 2
    assert capsys.readouterr().err.strip() == ("error: a recipe is required; usage: python -m eval.world_report "
                                               "RECIPE [--force] [key=value ...]")
    assert table([recipe_file, "--jobs", "0"]) == 2  # 0 silently meant 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: --jobs must be >= 1, got 0"
    assert not (tmp_path / "run").exists()
