"""Runs a recipe's stages in order (data → sft → online → eval) inside runs/<name>/.

Each stage writes its outputs and then a DONE marker; a stage with a marker is not redone, so rerunning the
same command resumes. The resolved config is saved at the first run; a changed recipe on resume is refused
(pass --force to accept the change). Each finished stage records a fingerprint of the config keys its outputs
depend on (stages.json): with --force, a stage whose keys changed is redone, and so is every stage after it,
instead of its old outputs being reused. Finished checkpoints carry a checksum manifest checked before they are
used again, and one run at a time holds the run directory (a lock file).

Longer than most modules (~450 lines): the stage sequence and the resume rules (fingerprints, manifests, lock)
that decide whether each stage may be skipped are kept together, so one file says when work is redone.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from filelock import FileLock, Timeout

from eval import winrate
from pipeline import data as data_stage
from pipeline import distributed, environment
from pipeline.config import ConfigError, OnlineConfig, Recipe, save_resolved, to_dict
from pipeline.durable import MANIFEST, StateError, atomic_write_text, crash_point, verify_manifest, write_manifest
from pipeline.labels import LabelStore
from pipeline.models import load_policy, train_world_tokenizer
from pipeline.online import run_online, validate
from pipeline.sft import run_sft
from pipeline.transfer import arm_names
from reward_sources import Context, build_source
from reward_sources import build_judge as build_registry_judge
from reward_sources.registry import check_no_secrets

log = logging.getLogger("pipeline")
STAGES = ("data", "sft", "sources", "online", "eval")
# The config keys each stage's outputs depend on (its inputs' keys included). Not here: name, run_dir, table and
# tracking, which change no stage output.
STAGE_KEYS = {"data": ("seed", "data"), "sft": ("seed", "data", "policy", "sft"),
              "sources": ("seed", "data", "policy", "source_models"),
              "online": ("seed", "data", "policy", "sft", "source_models", "judge", "online"),
              "eval": ("seed", "data", "policy", "sft", "source_models", "judge", "online", "eval")}
# A finished iteration is the same whatever these say: more iterations continue the run, and the failure threshold
# only decides whether an unfinished one may go on.
_NOT_OUTPUTS = {"iterations", "max_judge_failure_rate"}
# Keys added after runs existed, with the value that means "as before": left out of the comparison with a run's
# saved config.yaml and of the stage fingerprints while they hold it, so a run started before the key existed
# resumes as it was (no --force, no stage redone).
_ADDED_LATER = {("data", "exclude_docs_of"): "", ("table", "pairs"): [], ("online", "min_margin"): 0.0,
                ("online", "sft_anchor"): 0.0, ("table", "vary_build"): False}


def _comparable(config: dict) -> dict:
    """The config without _ADDED_LATER keys that hold their as-before value."""
    out = dict(config)
    for (section, key), as_before in _ADDED_LATER.items():
        if isinstance(out.get(section), dict) and out[section].get(key, as_before) == as_before:
            out[section] = {k: v for k, v in out[section].items() if k != key}
    return out


def configure_threads() -> int:
    """One torch thread unless TRLHF_THREADS says otherwise: on 2 shared cores the small models here ran
    up to 30x slower with 2 threads (thread hand-off dominates a 128-wide matmul; measured 0.24 s vs 7.7 s per
    SFT step while another process was busy)."""
    n = int(os.environ.get("TRLHF_THREADS", "1"))
    torch.set_num_threads(n)
    return n


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _diff(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in sorted(set(a) | set(b)) for k in _diff(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]


def fingerprint(config: dict, stage: str) -> str:
    config = _comparable(config)
    keys = {k: config.get(k) for k in STAGE_KEYS[stage]}
    if isinstance(keys.get("online"), dict):
        keys["online"] = {k: v for k, v in keys["online"].items() if k not in _NOT_OUTPUTS}
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()


def _stage_dirs(stage: str) -> str:
    """Glob of the directories that hold a stage's DONE markers (each source model's, each online iteration's)."""
    return {"sources": "sources/*", "online": "online/**"}.get(stage, stage)


def _finished(out: Path, stage: str) -> bool:
    """Whether any output of `stage` is marked finished (an online iteration counts)."""
    return any(out.glob(f"{_stage_dirs(stage)}/DONE"))


def _recorded(out: Path) -> dict:
    """stages.json; one line naming it when it is not a JSON mapping (it is written atomically: edited by hand)."""
    path = out / "stages.json"
    if not path.exists():
        return {}
    try:
        recorded = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        recorded = None
    if not isinstance(recorded, dict):
        raise StateError(f"'{path}' is corrupt; delete it and rerun (finished stages are then compared with "
                         "config.yaml)")
    return recorded


def _stale(out: Path, old: dict | None, new: dict) -> list[str]:
    """Finished stages whose recorded fingerprint differs from the recipe's. A stage finished before fingerprints
    were recorded is compared by the saved config.yaml, the config of the last run in this directory."""
    recorded = _recorded(out)
    stale = []
    for stage in STAGES:
        before = recorded.get(stage) or (fingerprint(old, stage) if old is not None else None)
        if _finished(out, stage) and before is not None and before != fingerprint(new, stage):
            stale.append(stage)
    return stale


def _invalidate(out: Path, stages: list[str]) -> None:
    """Remove the DONE markers (and checksum manifests) of `stages`, so that they are redone; their outputs are
    overwritten then, and labels already paid for are read back from the store where the queries are the same."""
    for stage in stages:
        for d in [out / stage] + [p for p in out.glob(_stage_dirs(stage)) if p.is_dir()]:
            for name in ("DONE", MANIFEST):
                (d / name).unlink(missing_ok=True)
        if stage == "data":  # trained on the old train split, and reused whenever it exists
            shutil.rmtree(out / "data" / "tokenizer", ignore_errors=True)
        log.warning("stage %s is redone: the config keys it depends on changed", stage)


def _record(out: Path, stage: str, recipe: Recipe) -> None:
    path = out / "stages.json"
    recorded = _recorded(out)
    recorded[stage] = fingerprint(to_dict(recipe), stage)
    atomic_write_text(path, json.dumps(recorded, indent=1))


def prepare_run_dir(recipe: Recipe, force: bool = False) -> Path:
    new = to_dict(recipe)
    try:  # the CLI checked the components; this covers every other caller, before config.yaml is written
        check_no_secrets("recipe", new)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    out = recipe.out
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "config.yaml"
    try:
        old = yaml.safe_load(saved.read_text()) if saved.exists() else None
    except (yaml.YAMLError, UnicodeDecodeError):
        old = []
    if old is not None and not isinstance(old, dict):  # not the mapping save_resolved wrote: edited by hand
        raise StateError(f"'{saved}' is corrupt; delete it to take this recipe as the run's own (stages.json still "
                         "decides which finished stages it makes stale)")
    # how many processes train at once changes no result: not a change of recipe
    changed = [k for k in _diff(_comparable(old), _comparable(new)) if k != "table.jobs"] if old is not None else []
    stale = _stale(out, old, new)
    if (changed or stale) and not force:
        redo = f"; --force redoes {', '.join(stale)}" if stale else ""
        what = f"recipe changed since {out} was started ({', '.join(changed[:6])})" if changed else (
            f"finished stages of {out} were made with another recipe")
        raise ConfigError(f"{what}{redo}; rerun with --force to accept, or set run_dir to a new directory")
    _invalidate(out, stale)
    save_resolved(recipe, saved)
    environment.record(out, new_run=old is None)
    return out


def _seal(d: Path) -> None:
    """A finished stage's checkpoint and selector state get a checksum manifest, checked before they are used
    again. Not metrics.json: it holds wall times, so a resumed run's manifest would differ from an uninterrupted
    one's (tests/test_kill.py compares every byte)."""
    write_manifest(d, [p for p in (d / "model", d / "selector.json") if p.exists()])


def verify(d: Path, redo: str) -> None:
    """Refuse a finished checkpoint that changed since it was written. One finished before manifests were written
    (or by a run killed between its DONE marker and its manifest) is sealed now."""
    if not verify_manifest(d, f"delete '{d}' and rerun the same command to {redo}"):
        _seal(d)


def check_label_count(out: Path, store: LabelStore) -> None:
    """A store holding fewer labels than a finished iteration recorded was replaced or truncated: refused, so that
    paid labels never silently vanish (an empty file opens as a new store)."""
    have = store.count()  # one COUNT(*) over the store, not one per finished iteration
    for it in sorted(out.glob("online/iter_*/DONE")):
        try:
            want = json.loads((it.parent / "metrics.json").read_text()).get("labels_spent_total", 0)
        except (ValueError, UnicodeDecodeError, AttributeError):  # written atomically: edited or damaged by hand
            raise StateError(f"'{it.parent / 'metrics.json'}' is corrupt; delete '{it.parent}' and rerun the same "
                             f"command to redo {it.parent.name} (and the iterations after it)") from None
        if have < want:
            raise StateError(f"label store '{store.path}' holds {have} labels, but {it.parent.name} finished "
                             f"with {want}: it was replaced or truncated; restore it from a backup (or delete "
                             f"{out / 'online'} to redo every iteration, asking every label again)")


def _done(stage_dir: Path) -> bool:
    return (stage_dir / "DONE").exists()


def _done_info(stage_dir: Path) -> dict:
    """What a DONE marker records; {} when it is not a JSON mapping (written atomically, so edited by hand): the
    stage that reads it is then redone."""
    try:
        info = json.loads((stage_dir / "DONE").read_text() or "{}")
    except (ValueError, UnicodeDecodeError):
        return {}
    return info if isinstance(info, dict) else {}


def online_finished(d: Path, iterations: int) -> bool:
    """An online stage directory (a run's, or a table run's) is done only if every iteration asked for is:
    raising online.iterations (with --force) continues the run."""
    return _done(d) and all(_done(d / f"iter_{t}") for t in range(1, iterations + 1))


def _mark(stage_dir: Path, info: dict | None = None) -> None:
    atomic_write_text(stage_dir / "DONE", json.dumps(info or {}, default=str))


def load_split(data_dir: Path, split: str) -> list[dict]:
    """A split the data stage wrote; one line naming the file when it is damaged (a line that is not JSON), not a
    traceback."""
    try:
        return data_stage.load_split(data_dir, split)
    except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
        raise StateError(f"'{Path(data_dir) / f'{split}.jsonl'}' is corrupt ({e}); delete '{data_dir}' and rerun the "
                         "same command to redo the data stage") from None


def policy_config(recipe: Recipe, name: str | Path | None = None):
    """The policy's ModelConfig, pointed at a checkpoint when name is given."""
    if name is None:
        return recipe.policy
    return dataclasses.replace(recipe.policy, name=str(name), tokenizer="auto")


def tokenizer_dir(recipe: Recipe, model=None) -> Path | None:
    """From-scratch models get a tokenizer trained on the run's own training corpus (one per run, shared)."""
    model = model or recipe.policy
    if model.tokenizer not in ("auto", "world") or not model.name.startswith("shape:"):
        return None
    tok = recipe.out / "data" / "tokenizer"
    with distributed.main_first():  # trained once, by the main process; the others then find it
        if not (tok / "tokenizer.json").exists():
            rows = load_split(recipe.out / "data", "train")
            train_world_tokenizer((t for r in rows for t in (r["document"], r["summary"])), tok)
    return tok


def stage_data(recipe: Recipe) -> None:
    d = recipe.out / "data"
    if _done(d):
        return
    report = data_stage.run_data(recipe.data, d)
    print(f"data: {report['n_train']} train / {report['n_eval']} eval / {report['n_test']} test rows "
          f"({report['skipped_empty']} empty and {report['skipped_duplicate_id']} duplicate skipped, "
          + (f"{report['excluded_document']} left out by data.exclude_docs_of, " if recipe.data.exclude_docs_of else "")
          + f"{report['truncated']} truncated)", flush=True)
    _mark(d, report)


def stage_sources(recipe: Recipe) -> None:
    """Larger models the recipe trains itself for loglik sources (the offline world's T5-base / T5-large),
    each with its own SFT, after the policy's (so `--stage sft` stays the policy alone)."""
    for sm in recipe.source_models:
        d = recipe.out / "sources" / sm.label
        if _done(d):
            continue
        seed_everything(sm.sft.seed)
        model = load_policy(sm.model, tokenizer_dir=tokenizer_dir(recipe, sm.model))
        metrics = run_sft(model, sm.sft, load_split(recipe.out / "data", "train"),
                          load_split(recipe.out / "data", "eval"), d)
        if distributed.is_main():
            print(f"source model '{sm.label}': {metrics['n_params'] / 1e6:.1f}M params, "
                  f"ROUGE-Lsum {metrics['rouge_lsum']}, {metrics['wall_s']:.0f}s", flush=True)
            _seal(d)
            _mark(d, metrics)
        distributed.barrier()


def resolve_model_refs(recipe: Recipe, spec: dict) -> dict:
    """A source's `model: run:<label>` points at a source model trained by this recipe's sft stage."""
    model = spec.get("model")
    ref = model if isinstance(model, str) else model.get("name") if isinstance(model, dict) else None
    if not (isinstance(ref, str) and ref.startswith("run:")):
        return spec
    label = ref[4:]
    labels = [sm.label for sm in recipe.source_models]
    if label not in labels:
        raise ConfigError(f"source model '{ref}' is not in source_models (labels: {', '.join(labels) or 'none'})")
    path = str(recipe.out / "sources" / label / "model")
    return {**spec, "model": {**model, "name": path} if isinstance(model, dict) else path}


def stage_sft(recipe: Recipe) -> None:
    d = recipe.out / "sft"
    if _done(d):
        return
    seed_everything(recipe.sft.seed)
    policy = load_policy(recipe.policy, tokenizer_dir=tokenizer_dir(recipe))
    if recipe.sft.enabled:
        train = load_split(recipe.out / "data", "train")
        ev = load_split(recipe.out / "data", "eval")
        metrics = run_sft(policy, recipe.sft, train, ev, d)
        rouge = "skipped" if metrics["rouge_lsum"] is None else f"{metrics['rouge_lsum']:.3f}"
        if distributed.is_main():
            print(f"sft: ROUGE-Lsum {rouge} on {min(len(ev), recipe.sft.eval_examples)} eval rows, "
                  f"loss {metrics['train_loss_first']:.3f} -> {metrics['train_loss_last']:.3f}, "
                  f"{metrics['wall_s']:.0f}s", flush=True)
    else:  # the online stage and the eval baseline start from the model as loaded
        if distributed.is_main():
            d.mkdir(parents=True, exist_ok=True)
            policy.save(d / "model")
        metrics = {"skipped": True}
    if distributed.is_main():
        _seal(d)
        _mark(d, metrics)
    distributed.barrier()


def build_judge(recipe: Recipe, judge_cfg=None):
    j = judge_cfg or recipe.judge
    try:
        return build_registry_judge(j.name, j.params, Context(run_dir=recipe.out))
    except ValueError as e:
        raise ConfigError(f"judge '{j.name}': {e}") from None


def build_scorers(recipe: Recipe) -> dict:
    specs = recipe.online.sources
    try:
        names = arm_names(specs)
    except (KeyError, TypeError):
        raise ConfigError("each entry of online.sources needs a 'name', e.g. {name: rouge}") from None
    except ValueError as e:
        raise ConfigError(str(e)) from None
    try:
        validate(recipe.online, names)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    ctx = Context(run_dir=recipe.out)
    scorers = {}
    for name, spec in zip(names, specs):
        try:
            clean = resolve_model_refs(recipe, {k: v for k, v in spec.items() if k != "label"})
            scorers[name] = build_source(clean, ctx)
        except ValueError as e:
            raise ConfigError(f"source '{name}': {e}") from None
    return scorers


def stage_online(recipe: Recipe) -> None:
    if distributed.is_main():
        verify_shared_inputs(recipe)
    online_run(recipe, recipe.out, recipe.online)


def online_run(recipe: Recipe, out: Path, online: OnlineConfig, judge=None, scorers: dict | None = None) -> None:
    """The online stage of `recipe` with the settings `online`, writing under `out` (the recipe's own run folder,
    or one (method, seed) row of a table, which shares the recipe's SFT checkpoint and source models): resumed from
    its DONE markers, its finished iterations verified, the label store's count checked, new iterations sealed. The
    caller verifies the shared inputs (verify_shared_inputs) once, not once per table row. The judge and sources
    are built here unless given (a table trains several runs with one set in one process)."""
    d = out / "online"
    if online_finished(d, online.iterations):
        return
    if distributed.is_main():
        _verify_iterations(d)
        for it in d.glob("iter_*"):  # an unfinished iteration is redone: a manifest of its earlier outputs is void
            if not _done(it):
                (it / MANIFEST).unlink(missing_ok=True)
    judge = build_judge(recipe) if judge is None else judge
    scorers = build_scorers(recipe) if scorers is None else scorers
    # the label store is the main process's alone: labels are asked and written once
    store = LabelStore(out / "labels.sqlite") if distributed.is_main() else None
    try:
        if store is not None:
            check_label_count(out, store)
        seed_everything(online.seed)  # right before training: a run never depends on what was built before it
        results = run_online(recipe.policy, recipe.out / "sft" / "model", online,
                             load_split(recipe.out / "data", "train"), judge, store, scorers, d)
    finally:
        if store is not None:
            store.close()
    if distributed.is_main():
        for it in sorted(d.glob("iter_*/DONE")):
            if not (it.parent / MANIFEST).exists():
                _seal(it.parent)
        _mark(d, {"iterations": len(results)})
    distributed.barrier()


def verify_shared_inputs(recipe: Recipe) -> None:
    """What every online run of a recipe starts from: the SFT checkpoint and the source models."""
    verify(recipe.out / "sft", "redo SFT (and every stage after it)")
    for sm in recipe.source_models:
        verify(recipe.out / "sources" / sm.label, f"retrain source model '{sm.label}'")


def _verify_iterations(online_dir: Path) -> None:
    for it in sorted(online_dir.glob("iter_*/DONE")):
        verify(it.parent, f"redo {it.parent.name} (and the iterations after it)")


def stage_eval(recipe: Recipe) -> list[dict]:
    d = recipe.out / "eval"
    # redone when its table is gone too: printing the missing file would fail on every rerun
    if (_done(d) and _done_info(d).get("iterations") == recipe.online.iterations
            and (d / "winrates.md").exists()):
        print((d / "winrates.md").read_text())
        return []
    ev = recipe.eval
    verify_shared_inputs(recipe)
    _verify_iterations(recipe.out / "online")
    judge = build_judge(recipe, ev.judge)
    rows = load_split(recipe.out / "data", "test")[: ev.n_prompts]
    store = LabelStore(recipe.out / "labels.sqlite")
    check_label_count(recipe.out, store)
    # eval.baseline: the SFT checkpoint, or the model as the recipe names it before SFT ("initial", path None)
    base = ev.baseline
    baseline = recipe.out / "sft" / "model" if base == "sft" else None
    iterates = [(t, recipe.out / "online" / f"iter_{t}" / "model") for t in range(1, recipe.online.iterations + 1)]
    iterates = [(t, p) for t, p in iterates if p.exists()]
    if not iterates:
        raise ConfigError(f"no online checkpoints under {recipe.out / 'online'}; run the online stage first")
    samples = {}
    for label, path in [(base, baseline)] + [(f"iter{t}", p) for t, p in iterates]:
        # initial: the world tokenizer that SFT trained, named directly (tokenizer_dir() would wait at a barrier for
        # processes that do not run this stage); models with their own tokenizer never read it
        policy = (load_policy(policy_config(recipe, path)) if path is not None
                  else load_policy(recipe.policy, tokenizer_dir=recipe.out / "data" / "tokenizer"))
        for seed in ev.seeds:
            samples[(label, seed)] = winrate.sample_test(policy, rows, ev, recipe.online.gen_batch_size, seed)
        del policy
    per_seed_rows, summaries = [], []
    for t, _ in iterates:
        per_seed = {s: winrate.outcomes(store, judge, rows, samples[(f"iter{t}", s)], samples[(base, s)], s)
                    for s in ev.seeds}
        crash_point("eval")
        r, summ = winrate.head_to_head(f"{recipe.name}@iter{t}", base, t, per_seed)
        per_seed_rows += r
        summaries.append(summ)
    store.close()
    d.mkdir(parents=True, exist_ok=True)
    winrate.write_csv(d / "winrates.csv", per_seed_rows)
    winrate.write_csv(d / "summary.csv", summaries, fields=list(summaries[0]))
    table = winrate.markdown(summaries)
    atomic_write_text(d / "winrates.md", f"Judge: {judge.name}\n\n{table}\n")
    winrate.plot(summaries, d / "winrates.png", f"{recipe.name}: iterate vs {base} ({judge.name})")
    print(f"\nWin rates under {judge.name} ({len(rows)} test prompts, seeds {ev.seeds}):\n{table}", flush=True)
    _mark(d, {"iterations": recipe.online.iterations})
    return summaries


def run(recipe: Recipe, until: str = "eval", force: bool = False) -> None:
    if until not in STAGES:
        raise ConfigError(f"unknown stage '{until}'; stages: {', '.join(STAGES)}")
    # a user error, not the failed write ("finished stages are kept ... rerun") mkdir would report
    blocker = next((p for p in [recipe.out, *recipe.out.parents] if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ConfigError(f"run_dir '{recipe.out}': '{blocker}' is a file, not a directory; set run_dir to a directory")
    with run_dir_lock(recipe.out):
        with distributed.main_first():
            out = prepare_run_dir(recipe, force)
        setup_logging(out)
        t0 = time.time()
        for stage in STAGES[: STAGES.index(until) + 1]:
            ts = time.time()
            fn = {"data": stage_data, "sft": stage_sft, "sources": stage_sources, "online": stage_online,
                  "eval": stage_eval}[stage]
            if stage in ("data", "eval"):  # not sharded: the main process runs them, the others wait
                distributed.on_main(fn, recipe)
            else:  # sft, sources, online: every process (DDP updates, sharded generation)
                fn(recipe)
            if distributed.is_main():
                _record(out, stage, recipe)
            log.info("stage %s finished in %.1fs", stage, time.time() - ts)
    if not distributed.is_main():
        return
    print(f"done in {time.time() - t0:.0f}s; outputs in {out}", flush=True)


@contextlib.contextmanager
def run_dir_lock(out: Path):
    """One run per directory: a second one would ask (and pay for) every label again, and race on its files.
    Held by the main process (the others of a multi-process run work under it); released when the process
    ends, however it ends."""
    if not distributed.is_main():
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(out / ".lock", timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise StateError(f"run directory '{out}' is in use by another run; wait for it to finish, or set run_dir "
                         "to another directory") from None
    try:
        yield
    finally:
        lock.release()


def setup_logging(out: Path) -> None:
    root = logging.getLogger()
    if distributed.is_main() and not any(isinstance(h, logging.FileHandler) for h in root.handlers):
        fh = logging.FileHandler(out / "run.log")
        fh.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        root.addHandler(fh)
        root.setLevel(logging.INFO)
    consoles = [h for h in root.handlers if type(h) is logging.StreamHandler]
    # absl (rouge-score) calls logging.basicConfig() at its first log line: that console handler, at INFO, would
    # print every INFO line and the traceback io_error_line keeps for run.log; the console shows warnings only
    for h in consoles:
        h.setLevel(max(h.level, logging.WARNING))
    if not consoles:
        sh = logging.StreamHandler(sys.stderr)
        sh.setLevel(logging.WARNING)
        root.addHandler(sh)
