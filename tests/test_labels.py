from pipeline import world
from pipeline.config import WorldConfig
from pipeline.labels import LabelStore
from reward_sources.oracle import OracleJudge


class CountingJudge(OracleJudge):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def score(self, rows, responses, seed=0):
        self.calls += len(responses)
        return super().score(rows, responses, seed)


def test_store_survives_restart_and_reuses_labels(tmp_path):
    rows = world.generate(3, WorldConfig(), seed=0)
    resp = [r["summary"] for r in rows] + ["nothing", "nothing"]
    rr = rows + rows[:2]
    judge = CountingJudge()
    store = LabelStore(tmp_path / "labels.sqlite")
    first = store.scalar(judge, rr, resp, iteration=1, seed=0)
    assert judge.calls == 5 and store.count() == 5
    store.close()  # a restart: a new process opens the same file

    judge2 = CountingJudge()
    store2 = LabelStore(tmp_path / "labels.sqlite")
    again = store2.scalar(judge2, rr, resp, iteration=1, seed=0)
    assert again == first and judge2.calls == 0 and store2.reused == 5
    # a new seed is a new query; duplicates inside a batch are asked once
    store2.scalar(judge2, rr[:1] * 3, resp[:1] * 3, iteration=2, seed=1)
    assert judge2.calls == 1 and store2.spent() == {"1": 5, "2": 1}


def test_failures_are_stored_as_null(tmp_path):
    class Flaky(OracleJudge):
        kind = "pairwise"
        name = "flaky"

        def compare(self, rows, a, b, seed=0):
            return [None if x == "?" else 1.0 for x in a]

    rows = world.generate(2, WorldConfig(), seed=0)
    store = LabelStore(tmp_path / "l.sqlite")
    assert store.pairwise(Flaky(), rows, ["?", "ok"], ["b", "b"], iteration=1) == [None, 1.0]
    assert store.db.execute("SELECT COUNT(*) FROM labels WHERE answer IS NULL").fetchone()[0] == 1
