"""What an online run trained on, read back from its label store: the exact utility of each pair's chosen and
rejected response.

The world report simulates one labelling round on SFT samples before any run; this measures the pairs a run
actually formed. Chosen is the response with the judge's highest answer among a prompt's labelled responses,
rejected the lowest, as pipeline.online.make_pairs forms them; a prompt whose answers all tie (or that has one
distinct response) gave no pair there and is left out here. A difference between two builds' results that these
numbers do not show lies in how each policy responded to its pairs, not in the pairs.

Limits: a response labelled in an earlier iteration is stored under that iteration only (the store asks each query
once), so from iteration 2 on a prompt can show fewer responses than were compared; and a tie for the highest
answer among three or more responses is broken here by the order of asking, there by the run's random generator
(with K = 2, as in the label-scarce tables, such a tie is a tie of the whole prompt, which neither keeps).

numpy and the judge's `utility` only, so the statistics are testable on planted answers.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

FIELDS = ["method", "seed", "iteration", "pairs", "chosen_utility", "rejected_utility", "gap", "chosen_worse",
          "no_gap"]


def chosen_rejected(answers: list[tuple[str, str, float]]) -> list[tuple[str, str, str]]:
    """(prompt id, chosen, rejected) per prompt whose labelled responses the judge separated."""
    by_prompt: dict[str, list[tuple[str, float]]] = {}
    for pid, response, answer in answers:
        by_prompt.setdefault(pid, []).append((response, answer))
    out = []
    for pid, scored in by_prompt.items():
        best = max(scored, key=lambda x: x[1])
        worst = min(scored, key=lambda x: x[1])
        if best[1] > worst[1]:
            out.append((pid, best[0], worst[0]))
    return out


def pair_stats(answers: list[tuple[str, str, float]], rows_by_id: dict, utility) -> dict:
    """Mean exact utility of the chosen and of the rejected responses, their mean gap, and the shares of pairs
    whose chosen response is truly worse or truly equal. `utility(rows, responses)` is the world's oracle."""
    pairs = chosen_rejected(answers)
    if not pairs:
        return dict(pairs=0, chosen_utility=float("nan"), rejected_utility=float("nan"), gap=float("nan"),
                    chosen_worse=float("nan"), no_gap=float("nan"))
    rows = [rows_by_id[pid] for pid, _, _ in pairs]
    u = np.asarray(utility(rows + rows, [c for _, c, _ in pairs] + [r for _, _, r in pairs]), dtype=float)
    chosen, rejected = u[: len(pairs)], u[len(pairs):]
    d = chosen - rejected
    return dict(pairs=len(pairs), chosen_utility=float(chosen.mean()), rejected_utility=float(rejected.mean()),
                gap=float(d.mean()), chosen_worse=float(np.mean(d < 0)), no_gap=float(np.mean(d == 0)))


def write(out: Path, rows: list[dict], head: str) -> str:
    """training_pairs.csv (one row per method, seed, iteration) and training_pairs.md; returns the markdown."""
    with open(out / "training_pairs.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    lines = [head, "", "| method | seed | iteration | pairs | chosen | rejected | gap | chosen truly worse | no gap |",
             "|---" * 9 + "|"]
    lines += [f"| {r['method']} | {r['seed']} | {r['iteration']} | {r['pairs']} | {r['chosen_utility']:+.3f} | "
              f"{r['rejected_utility']:+.3f} | {r['gap']:+.3f} | {r['chosen_worse']:.3f} | {r['no_gap']:.3f} |"
              for r in rows]
    md = "\n".join(lines) + "\n"
    (out / "training_pairs.md").write_text(md)
    return md
