import math

import pytest
from torch.utils.tensorboard import SummaryWriter

from eval.train_curves import main, run_curves


def _log(folder, run, iteration, points):
    """Per-step scalars as pipeline.tracking writes them: one event file per iteration, suffix .iter<t>."""
    w = SummaryWriter(str(folder / "tb" / run / "online"), filename_suffix=f".iter{iteration}")
    for step, values in enumerate(points):
        for tag, v in values.items():
            w.add_scalar(tag, v, step)
    w.close()


def test_planted_curves_are_summarised_per_run_and_iteration(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("online:\n  max_grad_norm: 1.0\n")
    norms = [3.0, 0.5, 2.0, 0.9, 4.0, 1.5]  # four above the clip of 1.0
    _log(tmp_path, "methods/tpo/seed0", 1, [
        {"train/grad_norm": g, "train/chosen_logratio": -i, "train/rejected_logratio": -2 * i,
         "train/margin": float(i), "train/accuracy": 0.5 + 0.1 * i} for i, g in enumerate(norms)])
    _log(tmp_path, "methods/tpo/seed0", 2, [{"train/grad_norm": 0.2}])
    (tmp_path / "tb" / "sft").mkdir(parents=True)  # another stage's curves are not an online update
    SummaryWriter(str(tmp_path / "tb" / "sft")).close()

    rows = run_curves(tmp_path, first=2, last=3)
    assert [(r["run"], r["iteration"]) for r in rows] == [("methods/tpo/seed0", 1), ("methods/tpo/seed0", 2)]
    one = rows[0]
    assert one["steps"] == 6 and one["clipped"] == pytest.approx(4 / 6)
    assert one["grad_norm_median"] == pytest.approx(1.75) and one["grad_norm_first"] == pytest.approx(1.75)
    assert one["chosen_logratio_first"] == pytest.approx(-0.5) and one["rejected_logratio_first"] == pytest.approx(-1)
    assert one["margin_last"] == pytest.approx(4.0) and one["accuracy_last"] == pytest.approx(0.9)
    two = rows[1]
    assert two["steps"] == 1 and two["clipped"] == 0.0 and math.isnan(two["margin_last"])
    assert run_curves(tmp_path, clip=3.5, first=2, last=3)[0]["clipped"] == pytest.approx(1 / 6)

    assert main([str(tmp_path), "--first", "2", "--last", "3"]) == 0
    assert "| methods/tpo/seed0 | 1 | 6 | 0.67 | 1.75 |" in capsys.readouterr().out
    for argv, msg in (([str(tmp_path / "nowhere")], "not a run folder"),
                      ([str(tmp_path), "--first", "0"], "--first and --last must be >= 1")):
        assert main(argv) == 2
        assert msg in capsys.readouterr().err
