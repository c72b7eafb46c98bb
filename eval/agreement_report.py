"""What make validate writes: agreement.md, agreement.csv (failed scorers included, with their reason), agreement.png,
scores.csv (ids, systems and scores only: the data's text is never copied) and judge_raw.jsonl."""
from __future__ import annotations

import csv
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from eval.judgments import doc_groups

CSV_COLUMNS = ["scorer", "status", "spearman", "spearman_low", "spearman_high", "kendall", "kendall_low",
               "kendall_high", "pairwise_acc", "ci_low", "ci_high", "system_spearman", "system_spearman_low",
               "system_spearman_high", "n_summaries", "n_pairs", "failures", "seconds", "na_reasons"]


def fmt(x, digits=3):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _with_ci(r: dict, key: str, low: str, high: str) -> str:
    return f"{fmt(r[key])} [{fmt(r[low])}, {fmt(r[high])}]"


def na_reasons(r: dict) -> str:
    return "; ".join(f"{k}: {why}" for k, why in r.get("na", {}).items())


def markdown(results: list[dict], header: list[str]) -> str:
    lines = header + ["", "| scorer | Spearman [95% CI] | Kendall [95% CI] | pairwise acc [95% CI] "
                          "| system Spearman [95% CI] | summaries | pairs | failures | seconds |",
                      "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['scorer']} | {_with_ci(r, 'spearman', 'spearman_low', 'spearman_high')} "
                     f"| {_with_ci(r, 'kendall', 'kendall_low', 'kendall_high')} "
                     f"| {_with_ci(r, 'pairwise_acc', 'ci_low', 'ci_high')} "
                     f"| {_with_ci(r, 'system_spearman', 'system_spearman_low', 'system_spearman_high')} "
                     f"| {r['n_summaries']} | {r['n_pairs']} | {r['failures']} | {r['seconds']:.0f} |")
    notes = [f"- {r['scorer']}: n/a because {na_reasons(r)}" for r in results if r.get("na")]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["scorer"] for r in results]
    acc = np.array([r["pairwise_acc"] for r in results], dtype=float)
    err = np.array([[a - r["ci_low"], r["ci_high"] - a] for a, r in zip(acc, results)], dtype=float).T
    rho = np.array([r["spearman"] for r in results], dtype=float)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 1.1 * len(names) + 4), 4.5))
    ax1.bar(names, np.nan_to_num(acc), yerr=np.nan_to_num(err), capsize=3, color="tab:blue")
    ax1.axhline(0.5, color="grey", ls="--", lw=1, label="chance")
    ax1.set(ylabel="pairwise accuracy vs people (95% CI)", ylim=(0, 1))
    ax1.legend()
    ax2.bar(names, np.nan_to_num(rho), color="tab:orange")
    ax2.axhline(0, color="grey", lw=1)
    ax2.set(ylabel="per-summary Spearman with human score", ylim=(-1, 1))
    for ax, values in ((ax1, acc), (ax2, rho)):
        ax.tick_params(axis="x", rotation=60)
        for k in np.flatnonzero(np.isnan(values)):  # an undefined metric must not read as a zero bar
            ax.text(k, 0.02, "n/a", ha="center", va="bottom", rotation=90, color="grey")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_scores(path: Path, rows: list[dict], columns: dict) -> None:
    """Per-summary scores by scorer: ids, systems and human scores only (the data's text is never copied)."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "system", "human_score"] + list(columns))
        for i, r in enumerate(rows):
            w.writerow([r["id"], r["system"], r["human_score"]] + [fmt(columns[c][i], 6) for c in columns])


def write_outputs(args, out, rows, skipped, exclude, results, columns, raw_all, failed, threads, workers, model_cpu,
                  t_all):
    n_docs = len(doc_groups(rows))
    with (out / "agreement.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows({**r, "status": "ok", "na_reasons": na_reasons(r)} for r in results)
        w.writerows({"scorer": label, "status": f"failed: {reason}"} for label, reason in failed)
    write_scores(out / "scores.csv", rows, columns)
    if raw_all:
        (out / "judge_raw.jsonl").write_text("".join(json.dumps(r) + "\n" for r in raw_all), encoding="utf-8")
    systems = sorted({r["system"] for r in rows})
    header = [f"# Agreement with human judgments: {Path(args.judgments).name}", "",
              f"- {len(rows)} summaries of {n_docs} documents, systems: {', '.join(systems)}"
              + (f" (excluded: {', '.join(exclude)})" if exclude else ""),
              f"- skipped rows: {skipped['null_document']} with a null document, "
              f"{skipped['null_summary_or_score']} without a summary or human score, "
              f"{skipped['excluded_document']} whose document is also in "
              f"{args.exclude_docs_of or 'the --exclude-docs-of file (none given)'}",
              f"- pairwise accuracy over document-wise pairs whose human scores differ (scorer ties = 0.5); "
              f"95% CI: {args.bootstrap} bootstrap resamples of documents, seed {args.seed}",
              f"- pairwise judges: both orders, {'all' if args.judge_docs is None else f'the first {args.judge_docs}'}"
              " documents; per-summary score = "
              "mean win rate (Borda); failures = unparseable answers, left out",
              "- reference-based scorers (ROUGE, BERTScore) give a 'Gold' system (the reference itself) a perfect "
              "score; --exclude-systems Gold removes it",
              f"- wall time {time.time() - t_all:.0f} s; model scorers (log-probs, LLM judge) in {workers} worker "
              f"process(es), 1 torch thread each ({model_cpu:.0f} CPU s in all), ROUGE and BERTScore beside them "
              f"with {threads} thread(s); 'seconds' are wall seconds: a model scorer's from the submission of its work "
              "to the end of its last task, beside the others (log-probs shared by several scorers count for each)"]
    header += [f"- FAILED scorer {label}: {reason}" for label, reason in failed]
    md = markdown(results, header)
    (out / "agreement.md").write_text(md, encoding="utf-8")
    plot(results, out / "agreement.png")
    print(md)
    print(f"wrote {out}/agreement.md, agreement.csv, agreement.png, scores.csv", file=sys.stderr)
