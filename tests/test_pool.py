"""eval.pool: per-seed paired differences of several tables pooled into one interval over all their seeds."""
import csv

import pytest

from eval import paired
from eval.pool import PoolError, main, pool

HEAD = paired.header("oracle", [0, 1], 384, 4, 0.5)


def _table(path, diffs, head=HEAD, method="tpo", iteration=1):
    """A table folder as eval.paired.write leaves it: diffs is {seed: Δu}."""
    per_seed = [dict(seed=s, diff=d, utility=d, baseline_utility=0.0, expected_win_rate=0.5 + d / 10)
                for s, d in diffs.items()]
    m, lo, hi = paired.paired_interval(list(diffs.values()))
    row = dict(method=method, baseline="no_transfer", iteration=iteration, seeds=len(diffs), mean_diff=m, ci_low=lo,
               ci_high=hi, expected_win_rate=0.5, per_seed=per_seed)
    paired.write(path, [row], head)
    return path


def test_pooled_row_is_the_t_interval_over_every_tables_seeds(tmp_path):
    a = _table(tmp_path / "a", {5: 0.5, 6: 0.7})
    b = _table(tmp_path / "b", {7: 0.6, 8: 0.2})
    rows, head = pool([a, b])
    (r,) = rows
    # by hand: mean 0.5; sd = sqrt((0 + 0.04 + 0.01 + 0.09) / 3) = 0.216025; t(0.975, 3) = 3.182446
    assert r["seeds"] == 4 and r["mean_diff"] == pytest.approx(0.5)
    assert r["ci_low"] == pytest.approx(0.5 - 3.182446 * 0.216025 / 2, abs=1e-5)
    assert r["ci_high"] == pytest.approx(0.5 + 3.182446 * 0.216025 / 2, abs=1e-5)
    assert r["expected_win_rate"] == pytest.approx(0.55)  # the mean of the per-seed rates 0.55 / 0.57 / 0.56 / 0.52
    assert [s["seed"] for s in r["per_seed"]] == [5, 6, 7, 8]
    assert "(seeds [5, 6, 7, 8])" in head and str(a) in head


def test_a_replay_table_pools_with_a_real_one_and_rows_keep_their_own_seeds(tmp_path):
    a = _table(tmp_path / "a", {0: 1.0, 1: 0.0})
    b = _table(tmp_path / "b", {2: 0.5}, head="Every run's iteration-1 pairs replayed (...). " + HEAD)
    _table(tmp_path / "c", {3: 0.1}, method="aa:no_transfer")
    rows, _ = pool([a, b, tmp_path / "c"])
    by = {r["method"]: r for r in rows}
    assert by["tpo"]["seeds"] == 3 and by["tpo"]["mean_diff"] == pytest.approx(0.5)
    assert by["aa:no_transfer"]["seeds"] == 1  # one seed: a mean, no interval


def test_the_same_seed_twice_is_refused(tmp_path):
    a = _table(tmp_path / "a", {5: 0.5, 6: 0.7})
    b = _table(tmp_path / "b", {6: 0.6, 8: 0.2})
    with pytest.raises(PoolError, match="training seed 6 .* is in both"):
        pool([a, b])


def test_a_different_evaluation_is_refused(tmp_path):
    a = _table(tmp_path / "a", {5: 0.5, 6: 0.7})
    b = _table(tmp_path / "b", {7: 0.6, 8: 0.2}, head=paired.header("oracle", [7, 8], 300, 4, 0.5))
    with pytest.raises(PoolError, match="evaluated differently"):
        pool([a, b])


def test_the_command_writes_the_pooled_files_and_refuses_bad_input_in_one_line(tmp_path, capsys):
    a = _table(tmp_path / "a", {5: 0.5, 6: 0.7})
    b = _table(tmp_path / "b", {7: 0.6, 8: 0.2})
    assert main([str(a), str(b), "--out", str(tmp_path / "pooled")]) == 0
    with open(tmp_path / "pooled" / "paired_per_seed.csv") as fh:
        assert [int(r["seed"]) for r in csv.DictReader(fh)] == [5, 6, 7, 8]
    assert "Δu +0.50" in (tmp_path / "pooled" / "paired.md").read_text()
    assert main([str(a), str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "missing" in err and "\n" not in err
