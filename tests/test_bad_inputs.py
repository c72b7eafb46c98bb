"""The bad-input matrix: every user mistake or bad input has ONE exact behaviour, pinned here.

Either a one-line error naming the problem (the CLI prints `error: <msg>` and exits 2 for user mistakes,
1 for a run that cannot go on), or a counted and logged skip. Decisions:
- a non-UTF-8 byte in a local JSONL is a DataError naming file and line (not a skip: a wrong encoding garbles
  many rows, and dropping them silently would bias the data);
- a judge that raises or answers NaN/inf is a failure: NULL in labels.sqlite, never a score, asked again on a
  rerun; the online stage stops only when an iteration's failure share exceeds online.max_judge_failure_rate.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import re
import shutil
import sqlite3
from pathlib import Path

import pytest
from conftest import TINY_OVERRIDES

from pipeline import world
from pipeline.__main__ import main
from pipeline.config import ConfigError, ModelConfig, OnlineConfig, WorldConfig, load_recipe
from pipeline.labels import LabelStore, label_responses
from pipeline.models import ModelError, load_policy
from pipeline.online import make_pairs, reference_logprobs, update

REPO = Path(__file__).resolve().parents[1]
TINY = TINY_OVERRIDES



def cli(capsys, *argv) -> tuple[int, str]:
    """Exit code and the last stderr line of `python -m pipeline ...`, run in-process."""
    rc = main(list(argv))
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return rc, err[-1] if err else ""


@pytest.fixture
def recipe_file(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(f"name: bad\nrun_dir: {tmp_path / 'run'}\n")
    return p


# ------------------------------------------------------------------ recipes, overrides, CLI


def test_malformed_yaml(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\n  bad: [\n")
    assert cli(capsys, "run", str(p)) == (
        2, f"error: recipe '{p}' is not valid YAML at line 2, column 6: mapping values are not allowed here")


def test_python_tag_in_recipe_is_rejected_not_executed(tmp_path, capsys):
    p = tmp_path / "tag.yaml"
    marker = tmp_path / "RAN"
    p.write_text(f'name: !!python/object/apply:os.system ["touch {marker}"]\n')
    assert cli(capsys, "run", str(p)) == (
        2, f"error: recipe '{p}' is not valid YAML at line 1, column 7: could not determine a constructor for the "
           "tag 'tag:yaml.org,2002:python/object/apply:os.system'")
    assert not marker.exists()


def test_python_tag_in_override_stays_a_plain_string(recipe_file, capsys):
    assert cli(capsys, "run", str(recipe_file), "online.beta=!!python/object/apply:os.system [echo hi]") == (
        2, "error: 'online.beta' must be a number, got '!!python/object/apply:os.system [echo hi]'")
    assert load_recipe(None, ["name=!!python/object/apply:os.system [echo hi]"]).name.startswith("!!python")


def test_recipe_file_does_not_exist(tmp_path, capsys):
    assert cli(capsys, "run", str(tmp_path / "none.yaml")) == (
        2, f"error: recipe '{tmp_path / 'none.yaml'}' does not exist")


def test_unknown_key_in_recipe_file_did_you_mean(tmp_path, capsys):
    p = tmp_path / "r.yaml"
    p.write_text("online:\n  bta: 0.1\n")
    assert cli(capsys, "run", str(p)) == (2, "error: unknown key 'online.bta'; did you mean 'beta'?")


def test_unknown_override_key_did_you_mean(recipe_file, capsys):
    assert cli(capsys, "run", str(recipe_file), "sft.stpes=3") == (
        2, "error: unknown key 'sft.stpes'; did you mean 'steps'?")


@pytest.mark.parametrize("override, message", [
    ("online.k=2.5", "'online.k' must be an integer, got '2.5'"),
    ("online.beta=abc", "'online.beta' must be a number, got 'abc'"),
    ("sft.enabled=maybe", "'sft.enabled' must be true or false, got 'maybe'"),
    ("online.loss=dop", "'online.loss' must be one of dpo, ipo, xpo, got 'dop' (did you mean 'dpo'?)"),
    ("eval.seeds=3", "'eval.seeds' must be a list, got int '3'"),
])
def test_wrong_types(recipe_file, capsys, override, message):
    assert cli(capsys, "run", str(recipe_file), override) == (2, f"error: {message}")


@pytest.mark.parametrize("override, message", [
    ("judge.name=oracel", "judge.name: unknown judge 'oracel'; known: oracle, pairwise_http, pairwise_llm, python, "
                          "reward_model. Did you mean 'oracle'?"),
    ("eval.judge={name: rewardmodel}", "eval.judge.name: unknown judge 'rewardmodel'; known: oracle, pairwise_http, "
                                       "pairwise_llm, python, reward_model. Did you mean 'reward_model'?"),
    ("online.sources=[{name: rogue}]", "online.sources[0].name: unknown source 'rogue'; known: bertscore, evaluate, "
                                       "loglik, python, reward_model, rouge. Did you mean 'rouge'?"),
    ("online.selector.name=ucbb", "online.selector.name: unknown selector 'ucbb'; known: none, fixed, ucb, "
                                  "relevance, dual_active, lowrank, shared, ensemble, linucb. Did you mean 'ucb'?"),
    ("online.selector={name: ucb, params: {blok_size: 4}}",
     "online.selector.params: unknown option(s) ['blok_size'] for selector 'ucb'; valid: ['block_size', 'c', 'carry', "
     "'self_win']; did you mean 'block_size'?"),
])
def test_unknown_names_fail_before_any_stage_runs(recipe_file, tmp_path, capsys, override, message):
    assert cli(capsys, "run", str(recipe_file), override) == (2, f"error: {message}")
    assert not (tmp_path / "run").exists()  # nothing ran: no data, no SFT minutes spent first


@pytest.mark.parametrize("overrides, message", [
    (["online.n_pool=0"], "selector 'ucb' transfers from online.sources but online.n_pool is 0"),
    (["online.n_pool=1", "online.replace_num=2"], "online.n_pool (1) is smaller than online.replace_num (2)"),
    (["online.selector={name: fixed, params: {arm: rouge}}", "online.n_pool=0"],
     "selector 'fixed' transfers from online.sources but online.n_pool is 0"),
    (["online.k=1"], "'online.k' must be >= 2, got 1"),
])
def test_transfer_with_nothing_to_transfer_fails_before_any_stage_runs(recipe_file, tmp_path, capsys, overrides,
                                                                      message):
    rc, line = cli(capsys, "run", str(recipe_file), "online.sources=[{name: rouge}]",
                   "online.selector={name: ucb, params: {block_size: 2}}", "online.n_pool=2", "online.replace_num=1",
                   *overrides)
    assert rc == 2 and line.startswith(f"error: {message}"), line
    assert not (tmp_path / "run").exists()


def test_override_without_equals(recipe_file, capsys):
    assert cli(capsys, "run", str(recipe_file), "online.beta") == (
        2, "error: override 'online.beta' must look like key.sub=value")


def test_unknown_stage(recipe_file, tmp_path, capsys):
    assert cli(capsys, "run", str(recipe_file), "--stage", "onlin") == (
        2, "error: unknown stage 'onlin'; stages: data, sft, sources, online, eval")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ data


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_missing_dataset_columns(tmp_path, capsys):
    p = _jsonl(tmp_path / "d.jsonl", [{"id": "1", "text": "t", "summary": "s"}])
    assert cli(capsys, "run", _recipe(tmp_path), "data.source=local", f"data.path={p}",
               "--stage", "data") == (
        2, f"error: local '{p}': row 0 lacks column(s) ['document']; need id, document, summary")


def _recipe(tmp_path) -> str:
    p = tmp_path / "r.yaml"
    p.write_text(f"name: bad\nrun_dir: {tmp_path / 'run'}\n")
    return str(p)


def test_empty_duplicate_and_overlong_rows_are_counted_skips(tmp_path, capsys, caplog):
    rows = [{"id": str(i), "document": "word " * 5, "summary": "s"} for i in range(20)]
    rows += [{"id": "e1", "document": "", "summary": "s"}, {"id": "e2", "document": "doc", "summary": "  "},
             {"id": "3", "document": "duplicate id", "summary": "s"},
             {"id": "long", "document": " ".join(["w"] * 50), "summary": "s"}]
    p = _jsonl(tmp_path / "d.jsonl", rows)
    caplog.set_level(logging.INFO, logger="pipeline.data")
    rc = main(["run", _recipe(tmp_path), "data.source=local", f"data.path={p}", "data.max_document_words=20",
               "data.eval_size=2", "data.test_size=2", "--stage", "data"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "data: 17 train / 2 eval / 2 test rows (2 empty and 1 duplicate skipped, 1 truncated)" in out
    report = json.loads((tmp_path / "run" / "data" / "report.json").read_text())
    assert (report["skipped_empty"], report["skipped_duplicate_id"], report["truncated"]) == (2, 1, 1)
    rows_out = [json.loads(x) for s in ("train", "eval", "test")
                for x in (tmp_path / "run" / "data" / f"{s}.jsonl").read_text().splitlines()]
    assert max(len(r["document"].split(" ")) for r in rows_out) == 20
    assert [r["document"] for r in rows_out if r["id"] == "3"] == ["word " * 5]  # the first of a duplicate id wins
    logged = "'skipped_empty': 2, 'skipped_duplicate_id': 1, 'excluded_document': 0, 'truncated': 1"
    assert logged in caplog.text


def test_non_utf8_line_is_a_one_line_error(tmp_path, capsys):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'{"id": "1", "document": "a b", "summary": "s"}\n'
                  b'{"id": "2", "document": "caf\xe9", "summary": "s"}\n')
    assert cli(capsys, "run", _recipe(tmp_path), "data.source=local", f"data.path={p}", "--stage", "data") == (
        2, f"error: data file '{p}' line 2 is not valid UTF-8 (byte 0xe9 at column 29); re-save the file as UTF-8")


def test_hub_dataset_while_offline(tmp_path, capsys):
    assert cli(capsys, "run", _recipe(tmp_path), "data.source=hub", "data.path=EdinburghNLP/xsum",
               "--stage", "data") == (
        2, "error: hub dataset 'EdinburghNLP/xsum' requested while offline (HF_HUB_OFFLINE=1); offline alternatives: "
           "data.source=synthetic, or data.source=local data.path=<file.jsonl>")


# ------------------------------------------------------------------ models


def test_hub_model_while_offline_names_the_alternatives():
    with pytest.raises(ModelError) as e:
        load_policy(ModelConfig(name="t5-small"))
    assert str(e.value) == (
        "cannot load 't5-small' from the Hugging Face hub (We couldn't connect to 'https://huggingface.co' to load "
        "the files, and couldn't find them in the cached files.); offline alternatives: 'shape:t5-micro' (random "
        "weights), 'gguf:smollm2', or a local model directory (random weights: 'shape:t5-small')")


def test_missing_model_files_and_gguf(tmp_path):
    def err(name):
        with pytest.raises(ModelError) as e:
            load_policy(ModelConfig(name=name))
        assert "\n" not in str(e.value)
        return str(e.value)

    assert err(str(tmp_path / "m.gguf")) == f"GGUF file {tmp_path / 'm.gguf'} not found"
    assert err(str(tmp_path / "nope" / "model")) == f"model directory {tmp_path / 'nope' / 'model'} does not exist"
    d = tmp_path / "noweights"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 8, "d_ff": 8, "d_kv": 4,
                                               "num_layers": 1, "num_heads": 2, "vocab_size": 10}))
    assert err(str(d)) == (f"cannot load the weights of '{d}': Error no file named model.safetensors, or "
                           f"pytorch_model.bin, found in directory {d}.")


def _remote_code_dir(tmp_path) -> tuple[Path, Path]:
    d, marker = tmp_path / "remote", tmp_path / "REMOTE_CODE_RAN"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({
        "model_type": "t5", "d_model": 8, "d_ff": 8, "d_kv": 4, "num_layers": 1, "num_heads": 2, "vocab_size": 10,
        "auto_map": {"AutoConfig": "custom.Cfg", "AutoModelForSeq2SeqLM": "custom.M",
                     "AutoModelForSequenceClassification": "custom.M"}}))
    (d / "custom.py").write_text(f"open({str(marker)!r}, 'w').write('x')\nraise SystemExit('remote code ran')\n")
    return d, marker


def test_trust_remote_code_refused_unless_enabled(tmp_path):
    from pipeline.runner import build_judge

    d, marker = _remote_code_dir(tmp_path)
    recipe = load_recipe(None, [f"run_dir={tmp_path / 'run'}", "judge.name=reward_model",
                                f"judge.params={{model: {d}}}"])
    with pytest.raises(ConfigError) as e:
        build_judge(recipe)
    assert str(e.value) == (f"judge 'reward_model': reward_model: '{d}' ships its own Python code (auto_map in "
                            "config.json); set trust_remote_code: true only if you trust that repository")
    with pytest.raises(ModelError):  # the policy loader never runs it either (policy.trust_remote_code=false)
        load_policy(ModelConfig(name=str(d)))
    assert not marker.exists()


# ------------------------------------------------------------------ online: judges, empty responses, NaN loss


class FlakyJudge:
    """Scalar judge: length of the response, NaN for responses ending in '!', raises for any batch holding a
    response ending in '?' (so the store retries that batch one query at a time)."""
    kind, name = "scalar", "flaky"

    def __init__(self):
        self.calls = 0

    def score(self, rows, responses, seed=0):
        self.calls += len(responses)
        if any(y.endswith("?") for y in responses):
            raise RuntimeError("judge backend timed out\nsecond line")
        return [math.nan if y.endswith("!") else float(len(y)) for y in responses]


def test_judge_raising_or_nan_is_a_null_failure_not_a_score(tmp_path):
    store = LabelStore(tmp_path / "labels.sqlite")
    rows = [{"id": "p1"}, {"id": "p2"}]
    responses = [["a", "bbb", "cc!"], ["x", "yy?", "zzz?"]]
    stats = {}
    scores = label_responses(store, FlakyJudge(), rows, responses, 1, 0, stats)
    assert scores == [[1.0, 3.0, None], [1.0, None, None]]
    assert stats == {"labels": 6, "failed": 3}
    assert store.db.execute("SELECT COUNT(*) FROM labels WHERE answer IS NULL").fetchone()[0] == 3
    pairs, dropped = make_pairs(rows, responses, scores, random.Random(0))
    assert dropped == 1 and [(p[1], p[2]) for p in pairs] == [("bbb", "a")]  # p2 has one valid score: dropped
    store.close()

    class Fixed(FlakyJudge):
        def score(self, rows, responses, seed=0):
            self.calls += len(responses)
            return [float(len(y)) for y in responses]

    store = LabelStore(tmp_path / "labels.sqlite")  # a rerun asks only the failed queries again
    judge = Fixed()
    assert label_responses(store, judge, rows, responses, 1, 0) == [[1.0, 3.0, 3.0], [1.0, 3.0, 4.0]]
    assert judge.calls == 3 and store.count() == 6
    assert store.db.execute("SELECT COUNT(*) FROM labels WHERE answer IS NULL").fetchone()[0] == 0


def test_pairwise_judge_failures_are_null(tmp_path):
    class NanPairwise:
        kind, name = "pairwise", "nan-pairwise"

        def compare(self, rows, a, b, seed=0):
            return [math.nan if "bad" in (x + y) else 1.0 if len(x) > len(y) else 0.0 for x, y in zip(a, b)]

    store = LabelStore(tmp_path / "l.sqlite")
    stats = {}
    scores = label_responses(store, NanPairwise(), [{"id": "p"}], [["aa", "a", "bad"]], 1, 0, stats)
    assert scores == [[1.0, 0.0, None]] and stats == {"labels": 3, "failed": 2}


def test_zero_length_generations_are_scored_and_paired(make_policy, tmp_path):
    from reward_sources import build_judge

    rows = world.generate(3, WorldConfig(), seed=0)
    judge = build_judge("oracle", {})
    store = LabelStore(tmp_path / "l.sqlite")
    responses = [["", rows[0]["summary"], ""], ["", "", ""], ["", "", rows[2]["summary"]]]
    scores = label_responses(store, judge, rows, responses, 1, 0)
    assert all(isinstance(s, float) and math.isfinite(s) for ss in scores for s in ss)
    pairs, dropped = make_pairs(rows, responses, scores, random.Random(0))
    assert dropped == 1  # the all-empty prompt: its identical responses tie
    assert [(p[1], p[2]) for p in pairs] == [(rows[0]["summary"], ""), (rows[2]["summary"], "")]
    policy = make_policy("t5-tiny")
    cfg = OnlineConfig(lr=1e-3, warmup=0, epochs=1, batch_size=4)
    stats = update(policy, pairs, reference_logprobs(policy, pairs, cfg, None), cfg, seed=0)
    assert math.isfinite(stats["loss_last"])


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    """data + SFT of a t5-tiny once for this module (seconds); each test copies it."""
    d = tmp_path_factory.mktemp("sft_run")
    p = d / "r.yaml"
    p.write_text("name: bad\n")
    assert main(["run", str(p), f"run_dir={d / 'run'}", *TINY, "--stage", "sft"]) == 0
    return d / "run"


def _copy(sft_run, tmp_path) -> tuple[str, Path]:
    run = tmp_path / "run"
    shutil.copytree(sft_run, run)
    (run / "config.yaml").unlink()  # online settings differ per test
    return _recipe(tmp_path), run


def test_judge_failures_past_threshold_stop_the_online_stage(sft_run, tmp_path, capsys, monkeypatch):
    import pipeline.runner

    recipe, run = _copy(sft_run, tmp_path)

    class HalfNan:
        kind, name = "scalar", "half-nan"

        def score(self, rows, responses, seed=0):
            return [math.nan if i % 2 else float(len(y)) for i, y in enumerate(responses)]

    monkeypatch.setattr(pipeline.runner, "build_judge", lambda recipe, cfg=None: HalfNan())
    assert cli(capsys, "run", recipe, *TINY, "--stage", "online") == (
        1, "error: iteration 1: the judge failed on 9 of 18 labels (50% > online.max_judge_failure_rate=0.1); "
           "failures are stored as NULL and asked again when you rerun")
    db = sqlite3.connect(run / "labels.sqlite")
    assert db.execute("SELECT COUNT(*), SUM(answer IS NULL) FROM labels").fetchone() == (18, 9)
    assert not (run / "online" / "iter_1" / "DONE").exists()
    # a threshold above the failure share: the run goes on, the failed responses are not used as scores
    assert main(["run", recipe, *TINY, "online.max_judge_failure_rate=0.6", "--force", "--stage", "online"]) == 0
    m = json.loads((run / "online" / "iter_1" / "metrics.json").read_text())
    # the rerun asked the 9 failed queries again; HalfNan failed 4 of those (every 2nd of the batch of 9)
    assert m["judge_failures"] == 4 and m["pairs"] + m["tied_prompts_dropped"] == 6
    assert db.execute("SELECT COUNT(*), SUM(answer IS NULL) FROM labels").fetchone() == (18, 4)


def _digest(d: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(d.rglob("*")):
        if f.is_file():
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def test_nan_loss_stops_with_one_line_and_keeps_the_last_checkpoint(sft_run, tmp_path, capsys, monkeypatch):
    import pipeline.online

    recipe, run = _copy(sft_run, tmp_path)
    assert main(["run", recipe, *TINY, "--stage", "online"]) == 0
    good = _digest(run / "online" / "iter_1" / "model")
    (run / "online" / "DONE").unlink()  # a finished online stage is not reopened by a larger online.iterations
    real = pipeline.online.preference_loss
    monkeypatch.setattr(pipeline.online, "preference_loss",
                        lambda *a, **k: (lambda loss, stats: (loss * math.nan, stats))(*real(*a, **k)))
    assert cli(capsys, "run", recipe, *TINY, "online.iterations=2", "--force", "--stage", "online") == (
        1, "error: iteration 2: non-finite dpo loss at epoch 0 step 0; the last good checkpoint is kept "
           "(lower online.lr?)")
    assert _digest(run / "online" / "iter_1" / "model") == good
    assert (run / "online" / "iter_1" / "DONE").exists()
    assert not (run / "online" / "iter_2").exists() and not (run / "online" / "DONE").exists()
    load_policy(ModelConfig(name=str(run / "online" / "iter_1" / "model")))  # still loads


# ------------------------------------------------------------------ security: no unsafe deserialisation


def _sources() -> list[tuple[Path, str]]:
    skip = {".venv", "runs", ".git", "tests", "node_modules"}
    return [(p, p.read_text(encoding="utf-8", errors="replace")) for p in REPO.rglob("*.py")
            if not skip & set(p.relative_to(REPO).parts)]


def test_no_unsafe_yaml_pickle_eval_or_torch_load():
    bad = []
    for path, text in _sources():
        for n, line in enumerate(text.splitlines(), 1):
            code = line.split("#", 1)[0]
            if (re.search(r"\byaml\.(load|unsafe_load|full_load|load_all|unsafe_load_all)\(", code)
                    or re.search(r"\b(c?pickle|dill|marshal|shelve)\b", code)
                    or re.search(r"(?<![\w.])(?<!def )(eval|exec)\(", code)
                    or ("torch.load(" in code and "weights_only=True" not in code)):
                bad.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not bad, "unsafe deserialisation / eval:\n" + "\n".join(bad)
