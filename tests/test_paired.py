import csv
import math

import numpy as np
import pytest

from eval.paired import FIELDS, expected_win_rate, header, markdown, paired_interval, paired_rows, write


def sigma(x):
    return 1 / (1 + math.exp(-x))


def test_paired_interval_hand_worked():
    m, lo, hi = paired_interval([0.1, 0.3, 0.2])
    # sd 0.1 over 3 seeds: half-width t_{0.975,2} * 0.1 / sqrt(3) = 4.302653 * 0.057735 = 0.248414
    assert m == pytest.approx(0.2) and hi - m == pytest.approx(0.248414, abs=1e-6)
    assert m - lo == pytest.approx(hi - m)
    m, lo, hi = paired_interval([0.4])
    assert m == 0.4 and math.isnan(lo) and math.isnan(hi)
    with pytest.raises(ValueError):
        paired_interval([])


def test_expected_win_rate_hand_worked():
    # u_a - u_b = [0.5, -0.5] at T = 0.5: (sigma(1) + sigma(-1)) / 2 = 1/2
    assert expected_win_rate([0.5, 0.0], [0.0, 0.5], 0.5) == pytest.approx(0.5, abs=1e-15)
    assert expected_win_rate([1.0], [0.0], 0.5) == pytest.approx(0.880797, abs=1e-6)  # sigma(2)
    assert expected_win_rate(np.ones((2, 3)), np.zeros((2, 3)), 1.0) == pytest.approx(sigma(1.0))
    # T = 0: the noiseless judge, ties half a win
    assert expected_win_rate([1, -1, 0, 0], [0, 0, 0, 0], 0) == 0.5
    assert expected_win_rate([2, 1], [1, 1], 0) == 0.75
    with pytest.raises(ValueError, match=">= 0"):
        expected_win_rate([1.0], [0.0], -1)


def _utilities():
    base = np.ones((2, 2))
    tpo0 = base + [[0.2, 0.0], [0.0, 0.2]]  # mean +0.1 over the baseline
    tpo1 = base + 0.3
    return {("no_transfer", 0, 1): base, ("no_transfer", 1, 1): base, ("no_transfer", 0, 2): base,
            ("no_transfer", 1, 2): base,
            ("tpo", 0, 1): tpo0, ("tpo", 1, 1): tpo1, ("tpo", 0, 2): tpo0,  # seed 1 of iteration 2 is missing
            ("aa:no_transfer", 0, 1): base.copy(), ("aa:no_transfer", 1, 1): base.copy(),
            ("aa:no_transfer", 0, 2): base.copy(), ("aa:no_transfer", 1, 2): base.copy()}


def test_paired_rows_with_aa_row():
    rows = paired_rows(_utilities(), "no_transfer", 0.5, ["tpo", "no_transfer", "aa:no_transfer"])
    assert [(r["method"], r["baseline"], r["iteration"], r["seeds"]) for r in rows] == [
        ("tpo", "no_transfer", 1, 2), ("tpo", "no_transfer", 2, 1),
        ("aa:no_transfer", "no_transfer", 1, 2), ("aa:no_transfer", "no_transfer", 2, 2)]
    t1, t2, aa1, _ = rows
    # diffs [0.1, 0.3]: sd/sqrt(2) = 0.1, half-width t_{0.975,1} * 0.1 = 1.270620
    assert t1["mean_diff"] == pytest.approx(0.2) and t1["ci_high"] - 0.2 == pytest.approx(1.270620, abs=1e-6)
    seed0 = (2 * sigma(0.4) + 2 * 0.5) / 4  # items d = [0.2, 0, 0, 0.2]
    assert t1["expected_win_rate"] == pytest.approx((seed0 + sigma(0.6)) / 2)
    assert t2["mean_diff"] == pytest.approx(0.1) and math.isnan(t2["ci_low"]) and math.isnan(t2["ci_high"])
    assert (aa1["mean_diff"], aa1["ci_low"], aa1["ci_high"], aa1["expected_win_rate"]) == (0.0, 0.0, 0.0, 0.5)
    # default order: first appearance in the dict
    assert [r["method"] for r in paired_rows(_utilities(), "no_transfer", 0.5)][::2] == ["tpo", "aa:no_transfer"]


def test_paired_rows_refuse_unpaired_shapes():
    u = {("b", 0, 1): np.zeros((2, 2)), ("a", 0, 1): np.zeros((2, 3))}
    with pytest.raises(ValueError, match="cannot be paired"):
        paired_rows(u, "b", 0.5)


def test_paired_files(tmp_path):
    rows = paired_rows(_utilities(), "no_transfer", 0.5, ["tpo", "no_transfer", "aa:no_transfer"])
    md = write(tmp_path, rows, header("oracle[default]", [0, 1], 2, 2, 0.5))
    with open(tmp_path / "paired.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        got = list(reader)
    assert reader.fieldnames == FIELDS == ["method", "baseline", "iteration", "seeds", "mean_diff", "ci_low",
                                           "ci_high", "expected_win_rate"]
    assert len(got) == 4 and got[2]["method"] == "aa:no_transfer"
    assert "| tpo | no_transfer | Δu +0.20 [−1.07, +1.47] · 59.8% | Δu +0.10 [–, –] · 54.9% |" in md
    assert "| aa:no_transfer | no_transfer | Δu +0.00 [+0.00, +0.00] · 50.0% |" in md
    # what each interval is computed from: one line per (row, seed), each seed's diff and both utilities
    with open(tmp_path / "paired_per_seed.csv", newline="") as fh:
        seeds = list(csv.DictReader(fh))
    tpo1 = [(r["seed"], float(r["diff"]), float(r["utility"]), float(r["baseline_utility"])) for r in seeds
            if r["method"] == "tpo" and r["iteration"] == "1"]
    assert tpo1 == [("0", pytest.approx(0.1), pytest.approx(1.1), 1.0), ("1", pytest.approx(0.3), pytest.approx(1.3),
                                                                          1.0)]
    assert len(seeds) == 2 + 1 + 2 + 2 and float(seeds[0]["expected_win_rate"]) == pytest.approx(
        (2 * sigma(0.4) + 2 * 0.5) / 4)
    assert md.startswith("Exact utility under oracle[default]") and "2 test prompts × 2 samples" in md
    assert "T = 0.5" in md and "over training seeds" in md
    assert (tmp_path / "paired.md").read_text().strip() == md and markdown(rows) in md
