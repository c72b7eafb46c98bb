"""Issue 16's hostile-user pass: bad input tried as a hostile user would, through the real CLIs.

    .venv/bin/python tests/hostile_pass.py [--out FILE] [--only ID,ID,...] [--keep]

Not collected by pytest (no `test_` prefix): each case builds what it needs in a temporary directory (tiny recipes:
a synthetic world of 60 articles, `shape:t5-tiny`, 2 SFT steps, one online iteration of 4 prompts), runs a real
command as a subprocess (`python -m pipeline run|table|help`, `python -m eval.world_report|examples|utility`) and
classifies what came back:
- `one-line error`: exit code != 0, no traceback, and the last stderr line is the only `error: ...` line (an
  argparse usage error, `prog: error: ...` after its usage line, counts too); `late` is noted when a case meant
  to fail before any stage left a finished stage behind;
- `rc0-ok`: a case meant to succeed exited 0 and its result was checked;
- `traceback`, `rc0-WRONG` (exit 0 where an error was due, or a wrong/missing result), and `other` (a messy error,
  an error where success was due, a timeout): the failures; `skipped` when this machine cannot stage the case (a
  read-only mount needs root). The last line is the summary; the exit code is 1 when any case failed.
Cases that the test suite already pins (tests/test_hardening.py, tests/test_bad_inputs.py) are not repeated.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from conftest import tiny_recipe

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
ERROR_LINE = re.compile(r"^(error: |python -m [\w. ]+: error: )")


def tiny(**sections) -> dict:
    """conftest's tiny recipe, smaller still: seconds per stage, no event files."""
    small = {"data": {"n_examples": 60, "eval_size": 6, "test_size": 6},
             "sft": {"steps": 2, "eval_examples": 0},
             "online": {"iterations": 1, "prompts_per_iteration": 4, "max_new_tokens": 6, "epochs": 1},
             "eval": {"max_new_tokens": 6}, "tracking": {"report_to": ["none"]}}
    recipe = tiny_recipe("hostile", **small)  # tracking is not in tiny_recipe: set whole
    for section, value in sections.items():
        recipe[section] = {**recipe[section], **value} if isinstance(recipe.get(section), dict) else value
    return recipe


TABLE = {"seeds": [0], "aa": False, "n_prompts": 4, "utility_prompts": 4, "utility_samples": 2,
         "methods": [{"label": "no_transfer", "selector": {"name": "none"}},
                     {"label": "tpo", "selector": {"name": "ucb", "params": {"block_size": 2}}}]}


@dataclass
class Result:
    rc: int | None
    out: str
    err: str
    seconds: float


class Ctx:
    """One case's temporary directory, its recipe files and its commands."""

    def __init__(self, root: Path, cid: str, shared: dict):
        self.dir = root / cid
        self.dir.mkdir(parents=True)
        self.shared = shared
        self.run_dir = self.dir / "run"

    def recipe(self, content, name: str = "r.yaml") -> str:
        p = self.dir / name
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content if isinstance(content, str) else
                         "# python -m pipeline run r.yaml\n" + yaml.safe_dump(content, sort_keys=False))
        return name

    def cmd(self, *argv, timeout: float = 180) -> Result:
        env = {**os.environ, "TRLHF_THREADS": os.environ.get("TRLHF_THREADS", "1"), "HF_HUB_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": f"{REPO}{os.pathsep}{self.dir}"}
        t0 = time.monotonic()
        try:
            p = subprocess.run([PY, "-m", *map(str, argv)], cwd=self.dir, env=env, capture_output=True, text=True,
                               timeout=timeout)
        except subprocess.TimeoutExpired as e:
            return Result(None, str(e.stdout or ""), str(e.stderr or ""), time.monotonic() - t0)
        return Result(p.returncode, p.stdout, p.stderr, time.monotonic() - t0)

    def run(self, *args, recipe: str = "r.yaml", **kw) -> Result:
        return self.cmd("pipeline", "run", recipe, *args, **kw)

    def finished(self, kind: str = "run") -> Path:
        """A copy of the shared finished tiny run (or table run) as ./run, with its recipe as ./r.yaml."""
        base = self.shared[kind]()
        shutil.copytree(base / "run", self.run_dir, symlinks=True)
        shutil.copy(base / "r.yaml", self.dir / "r.yaml")
        return self.run_dir

    def stamps(self) -> dict:
        return {str(p.relative_to(self.run_dir)): p.stat().st_mtime_ns for p in self.run_dir.rglob("DONE")}


# ---------------------------------------------------------------- verdicts


def verdict(res: Result, expect: str, check=None, fresh: Path | None = None, want: str | None = None):
    """(verdict, detail) of one command; see the module docstring."""
    if res.rc is None:
        return "other", "timeout"
    if "Traceback" in res.err or "Traceback" in res.out:
        last = [line for line in res.err.splitlines() if line.strip()]
        return "traceback", last[-1][:200] if last else ""
    if res.rc == 0:
        if expect == "error":
            return "rc0-WRONG", "exit 0 where an error was due"
        problem = check() if check else None
        return ("rc0-WRONG", problem) if problem else ("rc0-ok", (check.__doc__ or "").strip() if check else "")
    lines = [line.strip() for line in re.split(r"[\r\n]+", res.err) if line.strip()]
    errors = [line for line in lines if ERROR_LINE.match(line)]
    if expect == "ok":
        return "other", f"rc {res.rc} where success was due: {(errors or lines or [''])[-1][:200]}"
    if not (len(errors) == 1 and lines[-1] == errors[0]):
        return "other", f"rc {res.rc}, not one error line: {' | '.join(lines[-3:])[:200]}"
    detail = f"rc {res.rc}: {errors[0]}"
    if want and want not in errors[0]:
        detail += f"  [expected to mention {want!r}]"
    if fresh is not None and (fresh / "data" / "DONE").exists():
        detail += "  [late: after stages ran]"
    return "one-line error", detail


CASES: list[tuple[str, str, object]] = []
# Run only with --all: each repeats a mechanism that a default case already exercises (about 5 s of CPU per case,
# mostly importing torch), so that the default pass stays near ten minutes of CPU.
EXTRA = {"A04", "A06", "A09", "B02", "B05", "B06", "B08", "B09", "B10", "B12", "B13", "B15", "B16", "B17", "B18",
         "B20", "B24", "C04", "C06", "C07", "C08", "C10", "C12", "C15", "C18", "C19", "C21", "C23", "C24", "D01",
         "D02", "D05", "D08", "D10", "D11", "D12", "D13", "E05", "E06", "E07", "E08", "E09", "E10", "E11", "E13",
         "E14", "F03", "F04", "F07", "G01", "G02", "G05", "G06", "G07", "G09", "H02", "H04", "H05", "H08", "H10",
         "H13", "H14", "J09", "J10", "J11", "J14", "K05", "K08", "A07", "A10", "B03", "D09", "E12", "F01", "G03",
         "H03", "H12", "K15"}


def case(cid: str, what: str):
    def deco(fn):
        CASES.append((cid, what, fn))
        return fn
    return deco


def err(ctx: Ctx, res: Result, want: str | None = None, fresh: bool = True):
    return verdict(res, "error", fresh=ctx.run_dir if fresh else None, want=want)


def pre(cid: str, what: str, want: str | None, *overrides, recipe: dict | None = None):
    """A case that must fail before any stage: the tiny recipe plus overrides."""
    @case(cid, what)
    def _(ctx):
        ctx.recipe(recipe or tiny())
        return err(ctx, ctx.run(*overrides), want)


def files(cid: str, what: str, want: str, recipe: str | bytes, others: dict[str, str] | None = None):
    """A case whose recipe file r.yaml (and the files it names, by name) must fail to load."""
    @case(cid, what)
    def _(ctx):
        ctx.recipe(recipe)
        for name, content in (others or {}).items():
            ctx.recipe(content, name)
        return err(ctx, ctx.run(), want)


# ---------------------------------------------------------------- A: the recipe file itself


@case("A01", "recipe path is a directory")
def _(ctx):
    (ctx.dir / "d.yaml").mkdir()
    return err(ctx, ctx.run(recipe="d.yaml"), "d.yaml")


files("A02", "recipe is not UTF-8 (unreadable text)", "UTF-8", b"name: caf\xe9\nrun_dir: run\n")


@case("A03", "empty recipe file (0 bytes)")
def _(ctx):
    ctx.recipe("")
    return err(ctx, ctx.run("--stage", "data", timeout=120), "empty", fresh=False)


@case("A04", "recipe of comments only (a YAML null document)")
def _(ctx):
    ctx.recipe("# python -m pipeline run r.yaml\n# nothing else\n")
    return err(ctx, ctx.run("--stage", "data", timeout=120), "empty", fresh=False)


files("A05", "YAML list at top level", "mapping", "- name: x\n- run_dir: run\n")
files("A06", "YAML scalar at top level", "mapping", "just some words\n")


@case("A07", "unicode key typo (onlïne:)")
def _(ctx):
    r = tiny()
    r["onlïne"] = r.pop("online")
    ctx.recipe(yaml.safe_dump(r, allow_unicode=True))
    return err(ctx, ctx.run(), "online")


@case("A08", "a section given twice in one file (the first silently dropped?)")
def _(ctx):
    text = "# python -m pipeline run r.yaml\n" + yaml.safe_dump(tiny(), sort_keys=False)
    ctx.recipe(text + "sft:\n  batch_size: 4\n")  # would drop sft.steps=2 for the default 900
    return err(ctx, ctx.run("--stage", "data", timeout=120), "twice")


@case("A09", "recipe is a dangling symlink")
def _(ctx):
    (ctx.dir / "r.yaml").symlink_to(ctx.dir / "gone.yaml")
    return err(ctx, ctx.run(), "does not exist")


@case("A10", "recipe is /dev/null")
def _(ctx):
    return err(ctx, ctx.run("--stage", "data", recipe="/dev/null", timeout=120), "empty", fresh=False)


# ---------------------------------------------------------------- B: values (ranges, types, huge, NaN/inf)

pre("B01", "tracking.sample_prompts=-1", "tracking.sample_prompts", "tracking.sample_prompts=-1")
pre("B02", "tracking.report_to a string, not a list", "tracking.report_to", "tracking.report_to=tensorboard")
pre("B03", "tracking.report_to typo", "tensorboard", "tracking.report_to=[tensorbord]")
pre("B04", "sft.seed=-1 (numpy seeds must be >= 0)", "sft.seed", "sft.seed=-1")
pre("B05", "online.seed=2**40 (past numpy's 32-bit seeds)", "online.seed", "online.seed=1099511627776")
pre("B06", "source_models[0].sft.seed=-3", "seed", "source_models=[{label: big, sft: {seed: -3, steps: 1}}]")
pre("B07", "online.n_pool=-2", "online.n_pool", "online.n_pool=-2")
pre("B08", "online.replace_num=0 with a transferring selector", "replace_num", "online.replace_num=0")
pre("B09", "online.top_k=-1", "online.top_k", "online.top_k=-1")
pre("B10", "online.prompts_per_iteration=0", "prompts_per_iteration", "online.prompts_per_iteration=0")
pre("B11", "eval.samples_per_prompt=0", "samples_per_prompt", "eval.samples_per_prompt=0")
pre("B12", "policy.max_input_tokens=0", "max_input_tokens", "policy.max_input_tokens=0")
pre("B13", "policy.lora.r=0 (LoRA on)", "lora.r", "policy.lora.enabled=true", "policy.lora.r=0")
pre("B14", "data.max_document_words=0", "max_document_words", "data.max_document_words=0")
pre("B15", "data.world.n_people=0", "n_people", "data.world.n_people=0")
pre("B16", "source_models[0].model.max_input_tokens=0 (nested list of dataclasses)", "max_input_tokens",
    "source_models=[{label: big, model: {name: 'shape:t5-tiny', max_input_tokens: 0}}]")
pre("B17", "online.beta=1e400 (inf after YAML's string-to-float)", "online.beta", "online.beta=1e400")
pre("B18", "online.lr='nan' as a quoted string", "online.lr", "online.lr='nan'")
pre("B19", "online.k=10**30 (huge)", "online.k", "online.k=1000000000000000000000000000000")
pre("B20", "sft.weight_decay=inf", "weight_decay", "sft.weight_decay=.inf")
pre("B21", "eval.temperature=inf", "eval.temperature", "eval.temperature=.inf")
pre("B22", "name= (empty: the run dir would be runs/ itself)", "name", "name=", "run_dir=")
pre("B23", "sft.warmup=-5", "sft.warmup", "sft.warmup=-5")
pre("B24", "online.nll_alpha=-1", "nll_alpha", "online.nll_alpha=-1")
pre("B27", "table.utility_prompts=0 (a table key, refused by run too)", "table.utility_prompts",
    "table.utility_prompts=0")


@case("B25", "policy.vocab_size smaller than the tokenizer (5 rows)")
def _(ctx):
    ctx.recipe(tiny())
    return err(ctx, ctx.run("policy.vocab_size=5", timeout=150), "vocab_size", fresh=False)


@case("B26", "online.prompts_per_iteration far above the train rows")
def _(ctx):
    ctx.recipe(tiny())
    res = ctx.run("online.prompts_per_iteration=5000", "--stage", "online", timeout=150)

    def check():
        """ran on every train row, and says so in metrics.json"""
        m = json.loads((ctx.run_dir / "online" / "iter_1" / "metrics.json").read_text())
        return None if m.get("prompts", 48) <= 48 else f"metrics say {m.get('prompts')} prompts"
    return verdict(res, "ok", check)


# ---------------------------------------------------------------- C: selector options of the wrong type, all 9

SEL = "online.selector={name: %s, params: %s}"
pre("C01", "none: an option it does not have", "block_size", SEL % ("none", "{block_size: 4}"))
pre("C02", "fixed: arm is a number", "arm", SEL % ("fixed", "{arm: 3}"))
pre("C03", "ucb: c is a word", "'online.selector.params.c'", SEL % ("ucb", "{c: high}"))
pre("C04", "ucb: carry is 'yes' (string)", "carry", SEL % ("ucb", "{carry: 'yes'}"))
pre("C05", "relevance: features=pca", "features", SEL % ("relevance", "{features: pca}"))
pre("C06", "relevance: rank is a word", "rank", SEL % ("relevance", "{rank: two}"))
pre("C07", "relevance: floor x sources > 1", "floor", "online.sources=[{name: rouge}, {name: rouge, label: r2, "
    "variant: rouge1}]", SEL % ("relevance", "{floor: 0.6}"))
pre("C08", "dual_active: teachers is a string", "teachers", SEL % ("dual_active", "{teachers: expert}"))
pre("C09", "dual_active: a teacher's cost is a list", "cost", SEL % ("dual_active", "{teachers: [{name: oracle, "
    "cost: [1]}]}"))
pre("C10", "dual_active: a teacher's cost is a word", "cost", SEL % ("dual_active", "{teachers: [{name: oracle, "
    "cost: cheap}]}"))
pre("C11", "dual_active: a teacher with an unknown persona", "grumpy", SEL % ("dual_active", "{teachers: [{name: "
    "oracle, params: {persona: grumpy}}, expert]}"))
pre("C12", "dual_active: a teacher naming an unknown judge", "orcale", SEL % ("dual_active", "{teachers: [{name: "
    "orcale}, expert]}"))
pre("C13", "dual_active: persona grumpy", "grumpy", SEL % ("dual_active", "{persona: grumpy}"))
pre("C14", "dual_active: a teacher's params is a list", "params", SEL % ("dual_active", "{teachers: [{name: oracle, "
    "params: [1]}, expert]}"))
pre("C15", "lowrank: population is a list", "population", SEL % ("lowrank", "{population: [default]}"))
pre("C16", "lowrank: a population weight is a list", "population", SEL % ("lowrank", "{population: {default: "
    "[1]}}"))
pre("C17", "lowrank: a target weight is NaN", "target", SEL % ("lowrank", "{target: {default: .nan}}"))
pre("C18", "shared: adapter=conv", "adapter", SEL % ("shared", "{adapter: conv}"))
pre("C19", "shared: folds is a string", "folds", SEL % ("shared", "{folds: '2'}"))
pre("C20", "ensemble: sources is a string", "sources", SEL % ("ensemble", "{sources: rouge}"))
pre("C21", "ensemble: sources holds a number", "sources", SEL % ("ensemble", "{sources: [3]}"))
pre("C22", "linucb: self_arm is 1", "self_arm", SEL % ("linucb", "{self_arm: 1}"))
pre("C23", "linucb: alpha is a list", "alpha", SEL % ("linucb", "{alpha: [1]}"))
pre("C24", "selector params is a list", "params", "online.selector={name: ucb, params: [1]}")


@case("C25", "shared: encoder directory that does not exist")
def _(ctx):
    ctx.recipe(tiny())
    return err(ctx, ctx.run(SEL % ("shared", "{encoder: /nonexistent/encoder}"), timeout=150), "encoder")


# ---------------------------------------------------------------- D: sources

SRC = "online.sources=[%s]"
pre("D01", "rouge: variant is a number", "variant", SRC % "{name: rouge, variant: 5}")
pre("D02", "rouge: against is null", "against", SRC % "{name: rouge, against: null}")
pre("D03", "loglik: reduce=median", "reduce", "source_models=[{label: big, model: {name: 'shape:t5-tiny'}, sft: "
    "{steps: 1}}]", SRC % "{name: loglik, model: 'run:big', reduce: median}")
pre("D04", "loglik: batch_size is a word", "batch_size", "source_models=[{label: big, model: {name: "
    "'shape:t5-tiny'}, sft: {steps: 1}}]", SRC % "{name: loglik, model: 'run:big', batch_size: many}")
pre("D05", "loglik: model is a number", "model", SRC % "{name: loglik, model: 5}")
pre("D06", "bertscore: num_layers is a word", "num_layers", SRC % "{name: bertscore, num_layers: deep}")
pre("D07", "evaluate: a local metric script that does not exist", "nope_metric.py",
    SRC % "{name: evaluate, metric: ./metrics/nope_metric.py}")
pre("D08", "evaluate: kwargs is a list", "kwargs", SRC % "{name: evaluate, metric: sacrebleu, kwargs: [1]}")
pre("D09", "python source: function is a float (math:pi)", "not a callable", SRC % "{name: python, function: "
    "'math:pi'}")
pre("D10", "python source: function names a module", "not a callable", SRC % "{name: python, function: "
    "'reward_sources:registry'}")
pre("D11", "python source: 'a:b:c'", "package.module:callable", SRC % "{name: python, function: 'a:b:c'}")
pre("D12", "online.sources a mapping, not a list", "online.sources", "online.sources={name: rouge}")
pre("D13", "online.sources holds a bare string", "online.sources", "online.sources=[rouge]")
pre("D14", "the same source twice without labels", "twice", SRC % "{name: rouge}, {name: rouge}")
pre("D15", "a source labelled 'self' (the no-transfer arm's name)", "self", SRC % "{name: rouge, label: self}")
pre("D16", "a source label that is a number", "label", SRC % "{name: rouge, label: 5}")


@case("D17", "python source returning strings (late by nature: needs a call)")
def _(ctx):
    (ctx.dir / "strsrc.py").write_text("def f(documents, responses, references):\n    return ['x'] * len(responses)\n")
    ctx.recipe(tiny())
    return err(ctx, ctx.run(SRC % "{name: python, function: 'strsrc:f'}", timeout=150), "numbers", fresh=False)


# ---------------------------------------------------------------- E: judges

pre("E01", "oracle weights: a value is a word", "weights", "judge.params={weights: {person: x}}")
pre("E02", "oracle weights: a key typo (invnted)", "invnted", "judge.params={weights: {invnted: 5}}")
pre("E03", "oracle temperature NaN", "temperature", "judge.params={temperature: .nan}")
pre("E04", "oracle persona is a list", "persona", "judge.params={persona: [default]}")
pre("E05", "pairwise_http timeout is a word", "timeout", "judge={name: pairwise_http, params: {base_url: "
    "'http://127.0.0.1:1/v1', model: m, timeout: fast}}")
pre("E06", "pairwise_http base_url ftp://", "base_url", "judge={name: pairwise_http, params: {base_url: "
    "'ftp://x/v1', model: m}}")
pre("E07", "pairwise_llm model is a number", "model", "judge={name: pairwise_llm, params: {model: 5}}")
pre("E08", "python judge: math:pi is not a callable", "not a callable", "judge={name: python, params: {function: "
    "'math:pi'}}")
pre("E09", "python judge: factory returns a dict (late by nature: built by the online stage)",
    "must return an object", "judge={name: python, params: "
    "{function: 'collections:OrderedDict'}}")
pre("E10", "judge.params a list", "judge.params", "judge.params=[1]")
pre("E11", "judge a bare string", "judge", "judge=oracle")
pre("E12", "eval.judge python with an unknown module", "nope_mod", "eval.judge={name: python, params: {function: "
    "'nope_mod:f'}}")
pre("E13", "eval.judge oracle temperature -1", "temperature", "eval.judge={name: oracle, params: {temperature: -1}}")
pre("E14", "judge.name null", "judge.name", "judge.name=null")
pre("E15", "eval.baseline=initiall (typo; only sft | initial)", "eval.baseline", "eval.baseline=initiall")


@case("E16", "python judge whose score() returns too few scores")
def _(ctx):
    (ctx.dir / "shortjudge.py").write_text(
        "class J:\n    kind, name = 'scalar', 'short'\n    def score(self, rows, responses, seed=0):\n"
        "        return [1.0]\n\ndef make():\n    return J()\n")
    ctx.recipe(tiny())
    return err(ctx, ctx.run("judge={name: python, params: {function: 'shortjudge:make'}}", timeout=150),
               "valid scores", fresh=False)


# ---------------------------------------------------------------- F: base chains


files("F01", "base: a missing file", "nope.yaml", "base: nope.yaml\nname: x\n")
files("F02", "base: a cycle a -> b -> a", "inherits", "base: b.yaml\nname: a\n", {"b.yaml": "base: r.yaml\nname: b\n"})
files("F03", "base: a file holding a list", "mapping", "base: b.yaml\nname: a\n", {"b.yaml": "- a\n- b\n"})
files("F04", "base: a number", "base", "base: 5\nname: a\n")


@case("F05", "base: a directory")
def _(ctx):
    (ctx.dir / "basedir").mkdir()
    ctx.recipe("base: basedir\nname: a\n")
    return err(ctx, ctx.run(), "basedir")


@case("F06", "base: an empty file")
def _(ctx):
    ctx.recipe("base: empty.yaml\n" + yaml.safe_dump(tiny()))
    ctx.recipe("", "empty.yaml")
    return err(ctx, ctx.run(), "empty")


files("F07", "base: with an unknown key inside the base", "steps", "base: b.yaml\nname: a\n",
      {"b.yaml": "sft:\n  stpes: 3\n"})


# ---------------------------------------------------------------- G: overrides

pre("G01", "override '=5' (empty key)", "key", "=5")
pre("G02", "override 'online..k=3'", "unknown key", "online..k=3")
pre("G03", "override 'online.k=' (empty value)", "online.k", "online.k=")
pre("G04", "override with unclosed YAML", "online.sources", "online.sources=[{name: rouge")
pre("G05", "override 'online.k.x=3' (into an int)", "online.k", "online.k.x=3")
pre("G06", "override 'data.world=5'", "data.world", "data.world=5")
pre("G07", "override 'online=null'", "online", "online=null")
pre("G08", "override 'judge.params.persona=[a, b]'", "persona", "judge.params.persona=[a, b]")
pre("G09", "override 'online.k=3=4'", "online.k", "online.k=3=4")

# ---------------------------------------------------------------- H: the command lines

for _cid, _what, _argv, _want in [
    ("H01", "unknown flag --forse", ["--forse"], "unrecognized"),
    ("H02", "--stage without a value", ["--stage"], "--stage"),
    ("H03", "--stage SFT (case)", ["--stage", "SFT"], "unknown stage"),
    ("H04", "--stage= (empty)", ["--stage="], "unknown stage"),
]:
    pre(_cid, _what, _want, *_argv)


@case("H05", "python -m pipeline (no command)")
def _(ctx):
    return err(ctx, ctx.cmd("pipeline"), "required")


@case("H06", "python -m pipeline runn r.yaml (command typo)")
def _(ctx):
    ctx.recipe(tiny())
    return err(ctx, ctx.cmd("pipeline", "runn", "r.yaml"), "invalid choice")


@case("H07", "python -m pipeline help lists keys, ranges and selectors")
def _(ctx):
    res = ctx.cmd("pipeline", "help")

    def check():
        """every section and selector listed"""
        need = ["online.beta: KL coefficient", "table.jobs:", "tracking.sample_prompts:",
                "online.selector.name = linucb"]
        missing = [n for n in need if n not in res.out]
        return f"missing {missing}" if missing else None
    return verdict(res, "ok", check)


@case("H08", "table --jobs abc")
def _(ctx):
    ctx.recipe(tiny(table=TABLE))
    return err(ctx, ctx.cmd("pipeline", "table", "r.yaml", "--jobs", "abc"), "--jobs")


@case("H09", "table --jobs 0")
def _(ctx):
    ctx.recipe(tiny(table=TABLE))
    return err(ctx, ctx.cmd("pipeline", "table", "r.yaml", "--jobs", "0", timeout=150), "jobs")


@case("H10", "table --forse (taken as an override)")
def _(ctx):
    ctx.recipe(tiny(table=TABLE))
    return err(ctx, ctx.cmd("pipeline", "table", "r.yaml", "--forse"), "--forse")


@case("H11", "world_report with no recipe")
def _(ctx):
    return err(ctx, ctx.cmd("eval.world_report"), "usage")


@case("H12", "world_report r.yaml --stage data (not its flag)")
def _(ctx):
    ctx.recipe(tiny())
    return err(ctx, ctx.cmd("eval.world_report", "r.yaml", "--stage", "data"), "--stage")


@case("H13", "examples on a directory that does not exist")
def _(ctx):
    return err(ctx, ctx.cmd("eval.examples", "nope"), "nope")


@case("H14", "utility with no checkpoints given")
def _(ctx):
    return err(ctx, ctx.cmd("eval.utility", "run"), "checkpoints")


# ---------------------------------------------------------------- I: the run directory


@case("I01", "run_dir is a file")
def _(ctx):
    (ctx.dir / "afile").write_text("x")
    ctx.recipe(tiny(run_dir="afile"))
    return err(ctx, ctx.run(), "afile")


@case("I02", "run_dir under a file")
def _(ctx):
    (ctx.dir / "afile").write_text("x")
    ctx.recipe(tiny(run_dir="afile/run"))
    return err(ctx, ctx.run(), "afile")


@case("I03", "run_dir that cannot be created (/proc)")
def _(ctx):
    ctx.recipe(tiny(run_dir="/proc/hostile_run"))
    return err(ctx, ctx.run(), "/proc/hostile_run")


# ---------------------------------------------------------------- J: a finished tiny run, then damaged or changed


@case("J01", "finished run: eval/DONE holds garbage")
def _(ctx):
    run = ctx.finished()
    (run / "eval" / "DONE").write_text("{not json")
    res = ctx.run()

    def check():
        """eval redone (its marker only says which iterations it covered), the table printed"""
        ok = json.loads((run / "eval" / "DONE").read_text()) == {"iterations": 1} and "win rate" in res.out
        return None if ok else "eval/DONE not rewritten or no table"
    return verdict(res, "ok", check)


@case("J02", "finished run: stages.json holds garbage")
def _(ctx):
    run = ctx.finished()
    (run / "stages.json").write_text("{{{")
    return err(ctx, ctx.run(), "stages.json", fresh=False)


@case("J03", "finished run: config.yaml is not valid YAML")
def _(ctx):
    run = ctx.finished()
    (run / "config.yaml").write_text("name: [unclosed\n")
    return err(ctx, ctx.run(), "config.yaml", fresh=False)


@case("J04", "finished run: iter_1/metrics.json holds garbage (eval redone)")
def _(ctx):
    run = ctx.finished()
    (run / "eval" / "DONE").unlink()
    (run / "online" / "iter_1" / "metrics.json").write_text("garbage")
    return err(ctx, ctx.run(), "metrics.json", fresh=False)


@case("J05", "finished run: eval/winrates.md deleted (eval/DONE kept)")
def _(ctx):
    run = ctx.finished()
    (run / "eval" / "winrates.md").unlink()
    res = ctx.run()

    def check():
        """eval redone: the table printed and winrates.md back"""
        return None if (run / "eval" / "winrates.md").exists() and "win rate" in res.out else "no table"
    return verdict(res, "ok", check)


@case("J06", "finished run: labels.sqlite deleted (eval redone)")
def _(ctx):
    run = ctx.finished()
    (run / "eval" / "DONE").unlink()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{run / 'labels.sqlite'}{suffix}").unlink(missing_ok=True)
    return err(ctx, ctx.run(), "labels", fresh=False)


@case("J07", "finished run: labels.sqlite is a directory")
def _(ctx):
    run = ctx.finished()
    (run / "eval" / "DONE").unlink()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{run / 'labels.sqlite'}{suffix}").unlink(missing_ok=True)
    (run / "labels.sqlite").mkdir()
    return err(ctx, ctx.run(), "labels.sqlite", fresh=False)


@case("J08", "finished run: data/test.jsonl deleted (eval redone)")
def _(ctx):
    run = ctx.finished()
    (run / "eval" / "DONE").unlink()
    (run / "data" / "test.jsonl").unlink()
    return err(ctx, ctx.run(), "test.jsonl", fresh=False)


@case("J09", "finished run: data/test.jsonl truncated mid-line (eval redone)")
def _(ctx):
    run = ctx.finished()
    (run / "eval" / "DONE").unlink()
    p = run / "data" / "test.jsonl"
    p.write_text(p.read_text()[:-40])
    return err(ctx, ctx.run(), "test.jsonl", fresh=False)


@case("J10", "finished run: sft/MANIFEST.sha256.json holds garbage (eval redone)")
def _(ctx):
    run = ctx.finished()
    (run / "eval" / "DONE").unlink()
    (run / "sft" / "MANIFEST.sha256.json").write_text("[1, 2")
    return err(ctx, ctx.run(), "MANIFEST", fresh=False)


@case("J11", "finished run: sft/model deleted (eval redone)")
def _(ctx):
    run = ctx.finished()
    (run / "eval" / "DONE").unlink()
    shutil.rmtree(run / "sft" / "model")
    return err(ctx, ctx.run(), "sft", fresh=False)


@case("J12", "finished run: eval/ replaced by a file (eval redone)")
def _(ctx):
    run = ctx.finished()
    shutil.rmtree(run / "eval")
    (run / "eval").write_text("x")
    return err(ctx, ctx.run(), "eval", fresh=False)


@case("J13", "finished run: run.log is a directory")
def _(ctx):
    run = ctx.finished()
    (run / "run.log").unlink(missing_ok=True)
    (run / "run.log").mkdir()
    return err(ctx, ctx.run(), "run.log", fresh=False)


@case("J14", "finished run: sft.steps changed, no --force")
def _(ctx):
    ctx.finished()
    return err(ctx, ctx.run("sft.steps=3"), "--force", fresh=False)


@case("J15", "finished run: sft.steps changed with --force redoes sft, online, eval")
def _(ctx):
    run = ctx.finished()
    before = ctx.stamps()
    res = ctx.run("sft.steps=3", "--force", timeout=150)

    def check():
        """exactly sft, online (iter_1) and eval redone"""
        after = ctx.stamps()
        redone = sorted(k for k in before if after.get(k) != before[k])
        want = ["eval/DONE", "online/DONE", "online/iter_1/DONE", "sft/DONE"]
        steps = json.loads((run / "sft" / "DONE").read_text()).get("steps")
        return None if redone == want and steps in (3, None) else f"redone {redone}, sft steps {steps}"
    return verdict(res, "ok", check)


@case("J16", "finished run: tracking.sample_prompts changed with --force redoes nothing")
def _(ctx):
    run = ctx.finished()
    before = ctx.stamps()
    res = ctx.run("tracking.sample_prompts=0", "--force")

    def check():
        """no stage redone, config.yaml updated"""
        saved = yaml.safe_load((run / "config.yaml").read_text())["tracking"]["sample_prompts"]
        return None if ctx.stamps() == before and saved == 0 else "a stage was redone or config.yaml is stale"
    return verdict(res, "ok", check)


@case("J17", "finished run: eval.baseline=initial with --force")
def _(ctx):
    run = ctx.finished()
    res = ctx.run("eval.baseline=initial", "--force", timeout=150)

    def check():
        """eval redone against the initial policy, and the table says so"""
        md = (run / "eval" / "winrates.md").read_text()
        return None if "| initial |" in md else "the table still compares against sft"
    return verdict(res, "ok", check)


@case("J18", "a second concurrent run on the same directory (two real CLIs)")
def _(ctx):
    ctx.recipe(tiny(sft={"steps": 400}))
    env = {**os.environ, "TRLHF_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    first = subprocess.Popen([PY, "-m", "pipeline", "run", "r.yaml", "--stage", "sft"], cwd=ctx.dir, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.monotonic()
        while not (ctx.run_dir / "data" / "DONE").exists() and first.poll() is None and time.monotonic() - t0 < 90:
            time.sleep(0.2)
        res = ctx.run("--stage", "sft", timeout=60)
        if first.poll() is not None:
            return "other", "the first run ended before the second started (raise sft.steps)"
    finally:
        first.kill()
        first.wait()
    out = err(ctx, res, "in use", fresh=False)
    return out if res.seconds < 30 else ("other", f"refused only after {res.seconds:.0f}s")


@case("J19", "finished run: iterations raised to 2 with --force, --stage online")
def _(ctx):
    run = ctx.finished()
    done = (run / "online" / "iter_1" / "DONE").stat().st_mtime_ns
    res = ctx.run("online.iterations=2", "--force", "--stage", "online", timeout=150)

    def check():
        """iter_1 kept, iter_2 finished"""
        ok = (run / "online" / "iter_1" / "DONE").stat().st_mtime_ns == done and (run / "online" / "iter_2" /
                                                                                   "DONE").exists()
        return None if ok else "iter_1 redone or iter_2 missing"
    return verdict(res, "ok", check)


@case("J20", "finished run: an unknown key planted in config.yaml, no --force")
def _(ctx):
    run = ctx.finished()
    with open(run / "config.yaml", "a") as fh:
        fh.write("legacy_key: 1\n")
    return err(ctx, ctx.run(), "legacy_key", fresh=False)


@case("J21", "finished run on a read-only filesystem (bind mount), eval to redo")
def _(ctx):
    run = ctx.finished()
    (run / "eval" / "DONE").unlink()
    rw = ctx.dir / "run_rw"
    run.rename(rw)
    run.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(rw), str(run)], capture_output=True).returncode == 0
    try:
        if not mounted or subprocess.run(["mount", "-o", "remount,bind,ro", str(run)],
                                         capture_output=True).returncode != 0:
            return "skipped", "cannot make a read-only bind mount here (needs root and mount rights)"
        return err(ctx, ctx.run(), "Read-only", fresh=False)
    finally:
        if mounted:
            subprocess.run(["umount", str(run)], capture_output=True)


# ---------------------------------------------------------------- K: eval tools and the table


@case("K01", "utility on a finished run: sft vs iter_1")
def _(ctx):
    run = ctx.finished()
    res = ctx.cmd("eval.utility", run, f"sft={run / 'sft' / 'model'}", f"it1={run / 'online' / 'iter_1' / 'model'}",
                  "--samples", "2", "--prompts", "4", timeout=150)

    def check():
        """both checkpoints' rows with finite utilities"""
        rows = [line for line in res.out.splitlines() if line.startswith(("| sft |", "| it1 |"))]
        return None if len(rows) == 4 and "nan" not in " ".join(rows) else f"rows {rows}"
    return verdict(res, "ok", check)


@case("K02", "utility: a checkpoint path that is not a model (data/)")
def _(ctx):
    run = ctx.finished()
    return err(ctx, ctx.cmd("eval.utility", run, f"x={run / 'data'}", "--samples", "1", "--prompts", "2"),
               "data", fresh=False)


@case("K03", "utility: --prompts 0")
def _(ctx):
    run = ctx.finished()
    return err(ctx, ctx.cmd("eval.utility", run, f"sft={run / 'sft' / 'model'}", "--prompts", "0"), "--prompts",
               fresh=False)


@case("K04", "utility: --temperature -1")
def _(ctx):
    run = ctx.finished()
    return err(ctx, ctx.cmd("eval.utility", run, f"sft={run / 'sft' / 'model'}", "--temperature", "-1",
                            "--prompts", "2"), "--temperature", fresh=False)


@case("K05", "utility: --bt-temperature -0.5 (reverses the win rate)")
def _(ctx):
    run = ctx.finished()
    return err(ctx, ctx.cmd("eval.utility", run, f"sft={run / 'sft' / 'model'}", f"b={run / 'sft' / 'model'}",
                            "--bt-temperature", "-0.5", "--prompts", "2", "--samples", "1"), "--bt-temperature",
               fresh=False)


@case("K06", "utility: config.yaml is not valid YAML")
def _(ctx):
    run = ctx.finished()
    (run / "config.yaml").write_text("name: [unclosed\n")
    return err(ctx, ctx.cmd("eval.utility", run, f"sft={run / 'sft' / 'model'}", "--prompts", "2"), "config.yaml",
               fresh=False)


@case("K07", "examples on a plain run (no table methods)")
def _(ctx):
    run = ctx.finished()
    return err(ctx, ctx.cmd("eval.examples", run), "checkpoint", fresh=False)


@case("K08", "examples --articles -1")
def _(ctx):
    run = ctx.finished()
    return err(ctx, ctx.cmd("eval.examples", run, "--articles", "-1"), "--articles", fresh=False)


@case("K09", "world_report on a tiny recipe")
def _(ctx):
    ctx.recipe(tiny())
    res = ctx.cmd("eval.world_report", "r.yaml", timeout=200)

    def check():
        """world_report.md written, sources section present"""
        p = ctx.run_dir / "world_report.md"
        return None if p.exists() and "rouge" in p.read_text() else "no world_report.md with the source"
    return verdict(res, "ok", check)


@case("K10", "world_report on local data without the world's facts says so")
def _(ctx):
    rows = [{"id": str(i), "document": f"the council met on day {i} and said things about roads",
             "summary": f"council met on day {i}"} for i in range(40)]
    (ctx.dir / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ctx.recipe(tiny(data={"source": "local", "path": "d.jsonl", "eval_size": 4, "test_size": 4}))
    res = ctx.cmd("eval.world_report", "r.yaml", timeout=200)

    def check():
        """the report says it needs planted facts"""
        return None if "no planted facts" in res.out else "no word about the missing facts"
    return verdict(res, "ok", check)


@case("K18", "utility on held-out rows without the world's facts")
def _(ctx):
    run = ctx.finished()
    for split in ("test", "eval"):
        p = run / "data" / f"{split}.jsonl"
        p.write_text("".join(json.dumps({k: v for k, v in json.loads(x).items() if k != "facts"}) + "\n"
                             for x in p.read_text().splitlines()))
    return err(ctx, ctx.cmd("eval.utility", run, f"sft={run / 'sft' / 'model'}", "--prompts", "2"), "facts",
               fresh=False)


@case("K11", "table: labels repeat")
def _(ctx):
    t = dict(TABLE, methods=[{"label": "a", "selector": {"name": "none"}}] * 2)
    ctx.recipe(tiny(table=t))
    return err(ctx, ctx.cmd("pipeline", "table", "r.yaml"), "repeat")


@case("K12", "table: baseline not a method (aa off, oracle headline)")
def _(ctx):
    ctx.recipe(tiny(table=dict(TABLE, baseline="nobody")))
    return err(ctx, ctx.cmd("pipeline", "table", "r.yaml", timeout=200), "nobody")


@case("K13", "table: seeds=[-1]")
def _(ctx):
    ctx.recipe(tiny(table=dict(TABLE, seeds=[-1])))
    return err(ctx, ctx.cmd("pipeline", "table", "r.yaml", timeout=200), "seeds")


@case("K14", "table: aa_seed_offset=-1000 (negative training seeds)")
def _(ctx):
    ctx.recipe(tiny(table=dict(TABLE, aa=True, aa_seed_offset=-1000)))
    return err(ctx, ctx.cmd("pipeline", "table", "r.yaml", timeout=200), "aa_seed_offset")


@case("K15", "table: a methods entry that is a bare string")
def _(ctx):
    ctx.recipe(tiny(table=dict(TABLE, methods=["tpo"])))
    return err(ctx, ctx.cmd("pipeline", "table", "r.yaml"), "table.methods")


@case("K16", "table: a tiny table finishes; examples on it")
def _(ctx):
    run = ctx.finished("table")
    res = ctx.cmd("eval.examples", run, "--samples", "2", timeout=150)

    def check():
        """table.md from the table run; examples.md with every checkpoint"""
        md = (run / "table" / "examples.md")
        ok = (run / "table" / "table.md").exists() and md.exists() and all(
            f"### {x}" in md.read_text() for x in ("sft", "no_transfer", "tpo"))
        return None if ok else "table.md or examples.md missing or incomplete"
    return verdict(res, "ok", check)


@case("K17", "table: a version of the table rerun with a changed seed list, no --force")
def _(ctx):
    ctx.finished("table")
    t = dict(TABLE, seeds=[0, 1])
    r = tiny(table=t)
    ctx.recipe(r)
    return err(ctx, ctx.cmd("pipeline", "table", "r.yaml"), "--force", fresh=False)


# ---------------------------------------------------------------- shared finished runs


def _shared(root: Path):
    made: dict[str, Path] = {}

    def build(kind: str):
        def get() -> Path:
            if kind not in made:
                ctx = Ctx(root, f"_base_{kind}", {})
                if kind == "run":
                    ctx.recipe(tiny())
                    res = ctx.run(timeout=300)
                else:
                    ctx.recipe(tiny(table=TABLE))
                    res = ctx.cmd("pipeline", "table", "r.yaml", timeout=400)
                if res.rc != 0:
                    raise RuntimeError(f"the shared {kind} did not finish (rc {res.rc}): {res.err[-2000:]}")
                made[kind] = ctx.dir
            return made[kind]
        return get
    return {"run": build("run"), "table": build("table")}


def _cpu() -> float:
    """CPU seconds of this process and its finished children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="also write the table of cases (markdown) here")
    p.add_argument("--only", help="comma-separated case ids or prefixes (A, J03, ...)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directories")
    p.add_argument("--all", action="store_true", help=f"also the {len(EXTRA)} cases that repeat a mechanism")
    args = p.parse_args(argv)
    only = [x.strip() for x in args.only.split(",")] if args.only else None
    cases = [c for c in CASES if (args.all or only or c[0] not in EXTRA)
             and (not only or any(c[0].startswith(o) for o in only))]
    root = Path(tempfile.mkdtemp(prefix="hostile_"))
    shared = _shared(root)
    rows, t0, cpu0 = [], time.monotonic(), _cpu()
    for cid, what, fn in cases:
        t = time.monotonic()
        try:
            v, detail = fn(Ctx(root, cid, shared))
        except Exception as e:  # noqa: BLE001 - the harness itself failed on this case: reported, not hidden
            v, detail = "other", f"harness: {type(e).__name__}: {str(e)[:300]}"
        rows.append((cid, what, v, detail))
        print(f"{cid:4} {v:15} {time.monotonic() - t:5.1f}s  {what} -- {detail}", flush=True)
    kinds = ("one-line error", "rc0-ok", "traceback", "rc0-WRONG", "other", "skipped")
    counts = {k: sum(r[2] == k for r in rows) for k in kinds}
    late = sum("[late" in r[3] for r in rows)
    summary = (f"hostile pass: {len(rows)} cases in {time.monotonic() - t0:.0f}s ({_cpu() - cpu0:.0f}s CPU): "
               f"{counts['one-line error']} one-line errors ({late} late), {counts['rc0-ok']} rc0-ok, "
               f"{counts['traceback']} tracebacks, "
               f"{counts['rc0-WRONG']} rc0-WRONG, {counts['other']} other, {counts['skipped']} skipped")
    if args.out:
        md = ["| id | case | verdict | detail |", "|---|---|---|---|"]
        md += [f"| {c} | {w} | {v} | {d.replace('|', '/')} |" for c, w, v, d in rows]
        Path(args.out).write_text("\n".join(md) + f"\n\n{summary}\n")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"kept {root}")
    print(summary)
    return 0 if counts["traceback"] + counts["rc0-WRONG"] + counts["other"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
