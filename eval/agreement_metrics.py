"""Agreement of one scorer with people: correlations, pairwise accuracy, and bootstrap intervals over documents
(pairs and summaries of one document are not independent, so documents are what is resampled)."""
from __future__ import annotations

import itertools

import numpy as np

from eval.judgments import doc_groups


def _undefined(x, y, what: str = "summaries") -> str | None:
    """Why a correlation is undefined (NaN is honest, 0 would not be), or None."""
    if len(x) < 3:
        return f"fewer than 3 {what}"
    if np.ptp(x) == 0:
        return "the scorer gives every one the same score"
    if np.ptp(y) == 0:
        return "people give every one the same score"
    return None


def correlations(scores: np.ndarray, human: np.ndarray, sys_of: np.ndarray) -> tuple[dict, dict]:
    """({spearman, kendall, system_spearman}, {metric: why it is n/a}) over the scored summaries."""
    from scipy import stats

    ok = ~np.isnan(scores)
    x, y = scores[ok], human[ok]
    systems = sorted(set(sys_of[ok]))
    means = np.array([(x[sys_of[ok] == s].mean(), y[sys_of[ok] == s].mean()) for s in systems]).reshape(-1, 2)
    why = {"spearman": _undefined(x, y), "kendall": _undefined(x, y),
           "system_spearman": _undefined(means[:, 0], means[:, 1], "systems")}
    fns = {"spearman": (stats.spearmanr, x, y), "kendall": (stats.kendalltau, x, y),
           "system_spearman": (stats.spearmanr, means[:, 0], means[:, 1])}
    values = {k: float("nan") if why[k] else float(fn(a, b).statistic) for k, (fn, a, b) in fns.items()}
    return values, {k: v for k, v in why.items() if v}


def pair_counts(rows: list[dict], scores: np.ndarray, outcomes: dict | None = None, keep=None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per document: (agreements, pairs) over its pairs whose human scores differ. Scorer ties count 0.5.
    outcomes: for pairwise judges, {(i, j): 1 (i better) | 0 | 0.5 | None}; otherwise outcomes come from comparing
    scores. keep(i, j): only those pairs (e.g. the pairs that involve one system)."""
    human = np.array([r["human_score"] for r in rows])
    ok = ~np.isnan(scores)
    groups = doc_groups(rows)
    c, n = np.zeros(len(groups)), np.zeros(len(groups))
    for d, g in enumerate(groups):
        for i, j in itertools.combinations(g, 2):
            if human[i] == human[j] or (keep is not None and not keep(i, j)):
                continue  # people have no preference: nothing to agree with
            if outcomes is not None:
                out = outcomes.get((i, j))
                if out is None:  # not judged (beyond --judge-docs) or a failure, counted by agreement()
                    continue
            else:
                if not (ok[i] and ok[j]):
                    continue
                out = 1.0 if scores[i] > scores[j] else 0.0 if scores[i] < scores[j] else 0.5
            c[d] += out if human[i] > human[j] else 1.0 - out
            n[d] += 1
    return c, n


def _boot_docs(n_docs: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n_docs, size=(n_boot, n_docs))


def ratio_interval(c: np.ndarray, n: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval over documents of sum(c) / sum(n): pairs of one document are not independent."""
    keep = n > 0
    c, n = c[keep], n[keep]
    if not len(n):
        return float("nan"), float("nan")
    idx = _boot_docs(len(n), n_boot, seed)
    boot = c[idx].sum(1) / n[idx].sum(1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(lo), float(hi)


def paired_difference(rows: list[dict], a: np.ndarray, b: np.ndarray, keep=None, n_boot: int = 1000,
                      seed: int = 0) -> dict:
    """Pairwise accuracy of scorer a minus scorer b on the same pairs, with a paired 95% bootstrap interval over
    documents (each resample draws the same documents for both scorers)."""
    ca, na = pair_counts(rows, a, keep=keep)
    cb, nb = pair_counts(rows, b, keep=keep)
    both = (na > 0) & (na == nb)  # a document counts only where both scorers judged the same pairs
    ca, cb, n = ca[both], cb[both], na[both]
    if not len(n):
        return {"diff": float("nan"), "low": float("nan"), "high": float("nan"), "n_pairs": 0}
    idx = _boot_docs(len(n), n_boot, seed)
    boot = (ca[idx].sum(1) - cb[idx].sum(1)) / n[idx].sum(1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"diff": float((ca.sum() - cb.sum()) / n.sum()), "low": float(lo), "high": float(hi),
            "n_pairs": int(n.sum())}


def correlation_intervals(rows: list[dict], scores: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict:
    """95% bootstrap intervals over documents of every correlation: {metric_low, metric_high}. Resamples where a
    correlation is undefined (constant scores) are left out of its percentiles."""
    human = np.array([r["human_score"] for r in rows])
    sys_of = np.array([r["system"] for r in rows])
    groups = [np.array(g) for g in doc_groups(rows)]
    boot: dict[str, list[float]] = {"spearman": [], "kendall": [], "system_spearman": []}
    if len(groups) >= 2:
        for pick in _boot_docs(len(groups), n_boot, seed):
            idx = np.concatenate([groups[k] for k in pick])
            for k, v in correlations(scores[idx], human[idx], sys_of[idx])[0].items():
                boot[k].append(v)
    out = {}
    for k, vals in boot.items():
        vals = np.array(vals)
        vals = vals[~np.isnan(vals)]
        lo, hi = np.percentile(vals, [2.5, 97.5]) if len(vals) else (float("nan"), float("nan"))
        out[f"{k}_low"], out[f"{k}_high"] = float(lo), float(hi)
    return out


def agreement(rows: list[dict], scores: np.ndarray, outcomes: dict | None = None, n_boot: int = 1000,
              seed: int = 0) -> dict:
    """Metrics for one scorer. scores: per-summary (NaN = not scored). outcomes: for pairwise judges,
    {(i, j): 1 (i better) | 0 | 0.5 | None}; otherwise pair outcomes come from comparing scores.
    res["na"]: {metric: why it is n/a}."""
    human = np.array([r["human_score"] for r in rows])
    res, why = correlations(scores, human, np.array([r["system"] for r in rows]))
    res.update(correlation_intervals(rows, scores, n_boot, seed), n_summaries=int((~np.isnan(scores)).sum()))
    c, n = pair_counts(rows, scores, outcomes)
    res["failures"] = sum(v is None for v in outcomes.values()) if outcomes is not None else 0
    res["n_pairs"] = int(n.sum())
    res["na"] = why
    if not n.sum():
        res.update(pairwise_acc=float("nan"), ci_low=float("nan"), ci_high=float("nan"))
        multi = any(len(g) > 1 for g in doc_groups(rows))
        why["pairwise_acc"] = ("no pair was judged" if outcomes is not None and multi else
                               "no document has two summaries with different human scores" if multi else
                               "one summary per document: no pairs to compare")
        return res
    res["pairwise_acc"] = float(c.sum() / n.sum())
    res["ci_low"], res["ci_high"] = ratio_interval(c, n, n_boot, seed)
    return res


def borda(n_rows: int, outcomes: dict) -> np.ndarray:
    """Per-summary mean win rate over its judged comparisons (NaN when none succeeded)."""
    wins, count = np.zeros(n_rows), np.zeros(n_rows)
    for (i, j), out in outcomes.items():
        if out is None:
            continue
        wins[i] += out
        wins[j] += 1.0 - out
        count[i] += 1
        count[j] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, wins / count, np.nan)
