"""The scorers eval.agreement knows by name, and scoring every summary with one in this process."""
from __future__ import annotations

import itertools

import numpy as np

from eval.judgments import AgreementError, doc_groups
from pipeline.config import closest

SMOL = {"name": "gguf:smollm2", "max_input_tokens": 512}


BUILTIN: dict[str, tuple[str, str, dict]] = {  # label -> (source|judge, registry name, spec)
    "rouge1": ("source", "rouge", {"variant": "rouge1"}),
    "rouge2": ("source", "rouge", {"variant": "rouge2"}),
    "rougeL": ("source", "rouge", {"variant": "rougeL"}),
    "rougeLsum": ("source", "rouge", {"variant": "rougeLsum"}),
    "bertscore": ("source", "bertscore", {}),
    "smollm2_sum": ("source", "loglik", {"model": SMOL, "reduce": "sum"}),
    "smollm2_mean": ("source", "loglik", {"model": SMOL, "reduce": "mean"}),
    "smollm2_pmi_sum": ("source", "loglik", {"model": SMOL, "reduce": "sum", "pmi": True}),
    "smollm2_pmi_mean": ("source", "loglik", {"model": SMOL, "reduce": "mean", "pmi": True}),
    "smollm2_judge": ("judge", "pairwise_llm", {"model": "gguf:smollm2"}),
    "support": ("source", "python", {"function": "reward_sources.examples:support"}),
}


# smollm2_judge only when named: it answered "A" in both orders on 2,247 of 2,250 comparisons of one set (at chance
# on every set tried) yet took ~19 of 30 minutes on 1,000 summaries
DEFAULT_SCORERS = ["rouge1", "rouge2", "rougeL", "rougeLsum", "bertscore", "smollm2_sum", "smollm2_mean",
                   "smollm2_pmi_sum", "smollm2_pmi_mean"]


CHEAP_SCORERS = ["rouge1", "rouge2", "rougeL", "rougeLsum", "bertscore"]


def resolve_scorers(names: list[str], recipe_path: str | None) -> list[tuple[str, str, str, dict]]:
    """[(label, source|judge, registry name, spec)] from --scorers names and a recipe's sources and judge."""
    out = []
    for name in names:
        if name.startswith("python:"):  # python:package.module:callable
            out.append((name, "source", "python", {"function": name[len("python:"):]}))
        elif name.startswith("learned:"):  # learned:CHECKPOINT_DIR, a judge saved by eval.learned_judge
            out.append((name, "judge", "reward_model", {"model": name[len("learned:"):]}))
        elif name in BUILTIN:
            out.append((name,) + BUILTIN[name])
        else:
            close = closest(name, BUILTIN)
            hint = f" Did you mean '{close}'?" if close else ""
            raise AgreementError(f"unknown scorer '{name}'; known: {', '.join(BUILTIN)}, python:module:callable, "
                                 f"learned:CHECKPOINT_DIR.{hint}")
    if recipe_path:
        from pipeline.config import ConfigError, load_recipe

        try:
            recipe = load_recipe(recipe_path)
        except ConfigError as e:
            raise AgreementError(str(e)) from None
        for k, spec in enumerate(recipe.online.sources):
            spec = dict(spec)
            out.append((f"{recipe.name}:{spec.get('name', '?')}#{k}", "source", spec.pop("name", "?"), spec))
        if recipe.judge.name != "oracle":  # the oracle reads the synthetic world's planted facts: not real data
            out.append((f"{recipe.name}:judge:{recipe.judge.name}", "judge", recipe.judge.name,
                        dict(recipe.judge.params)))
    return out


def run_source(label, registry_name, spec, rows, ctx=None, chunk: int = 100) -> np.ndarray:
    """Scores of every row; `ctx` (a reward_sources Context) carries log-probs already computed for loglik."""
    from tqdm import tqdm

    from reward_sources import build_source

    fn = build_source({"name": registry_name, **spec}, ctx)
    scores = np.full(len(rows), np.nan)
    groups = doc_groups(rows)
    per = max(1, chunk // max(1, round(len(rows) / len(groups))))  # whole documents per call (shared prompts)
    with tqdm(total=len(rows), desc=label, unit="summary", leave=False) as bar:
        for s in range(0, len(groups), per):
            idx = [i for g in groups[s:s + per] for i in g]
            scores[idx] = fn([rows[i]["document"] for i in idx], [rows[i]["summary"] for i in idx],
                             [rows[i]["reference"] for i in idx])
            bar.update(len(idx))
    return scores


def run_judge(label, registry_name, params, rows, judge_docs: int | None, seed: int = 0):
    """(outcomes {(i, j): value}, raw answers) for every pair of summaries in the first judge_docs documents
    (None: all)."""
    from tqdm import tqdm

    from reward_sources import build_judge

    judge = build_judge(registry_name, params)
    if judge.kind == "scalar":  # a scalar judge scores summaries; its pair outcomes come from the scores
        return judge, None, []
    outcomes, raw = {}, []
    for g in tqdm(doc_groups(rows)[:judge_docs], desc=label, unit="doc", leave=False):
        pairs = list(itertools.combinations(g, 2))
        res = judge.compare([rows[i] for i, _ in pairs], [rows[i]["summary"] for i, _ in pairs],
                            [rows[j]["summary"] for _, j in pairs], seed)
        record_answers(rows, pairs, res, judge.last_raw, outcomes, raw)
    return judge, outcomes, raw


def record_answers(rows, pairs, values, answers, outcomes: dict, raw: list) -> None:
    """A pairwise judge's answers on pairs (i, j) of rows: outcomes[(i, j)] = value, and one raw line per pair
    (ids and systems, not the text)."""
    for (i, j), value, answer in zip(pairs, values, answers):
        outcomes[(i, j)] = value
        raw.append({"id": rows[i]["id"], "a": rows[i]["system"], "b": rows[j]["system"], "result": value,
                    "ab": answer.get("ab"), "ba": answer.get("ba")})
