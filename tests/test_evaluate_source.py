"""The `evaluate` source (reward_sources/evaluate_metric.py), offline: metric scripts that the tests write
(`evaluate.Metric` subclasses) are loaded by path; the source's scores equal the metric's own `compute` on the
same inputs, per response, whether the metric gives one value per prediction or one for the batch; and a tiny
online run transfers by it."""
from __future__ import annotations

import csv

import pytest
from conftest import tiny_run_recipe

from reward_sources import build_source
from reward_sources.registry import RegistryError

OVERLAP = '''\
"""Share of the reference's words that the prediction uses (times `scale`): per prediction and their mean."""
import datasets
import evaluate


class WordOverlap(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="word overlap", citation="", inputs_description="",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions, references, scale=1.0):
        per = [scale * len(set(p.lower().split()) & set(r.lower().split())) / max(len(set(r.lower().split())), 1)
               for p, r in zip(predictions, references)]
        return {"overlap": sum(per) / len(per), "per_item": per}
'''

# SARI's input form: the article as `sources`, a list of references per prediction.
SOURCED = '''\
import datasets
import evaluate


class Sourced(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="sourced", citation="", inputs_description="",
            features=datasets.Features({"sources": datasets.Value("string"), "predictions": datasets.Value("string"),
                                        "references": datasets.Sequence(datasets.Value("string"))}))

    def _compute(self, sources, predictions, references):
        return {"score": [len(set(p.split()) & set(s.split())) + 0.01 * len(refs[0])
                          for s, p, refs in zip(sources, predictions, references)]}
'''

DOCS = ["the council said a new bridge would open in may", "police said 300 homes were planned by the river",
        "the minister announced plans for a school"]
REFS = ["a new bridge opens in may", "300 homes are planned", "the minister plans a school"]
RESPONSES = ["bridge opens in may", "the river homes", "a plan for a new school by the minister"]


@pytest.fixture(scope="module")
def scripts(tmp_path_factory):
    d = tmp_path_factory.mktemp("metrics")
    (d / "word_overlap.py").write_text(OVERLAP)
    (d / "sourced.py").write_text(SOURCED)
    return d


def own(path, **inputs):
    import evaluate

    return evaluate.load(str(path)).compute(**inputs)


def test_a_per_prediction_key_is_computed_once_per_batch(scripts):
    score = build_source({"name": "evaluate", "metric": str(scripts / "word_overlap.py"), "key": "per_item",
                          "kwargs": {"scale": 2.0}})
    expected = own(scripts / "word_overlap.py", predictions=RESPONSES, references=REFS, scale=2.0)["per_item"]
    assert score(DOCS, RESPONSES, REFS) == expected and len(set(expected)) == 3


def test_a_batch_level_key_is_the_metric_of_each_response_alone(scripts):
    path = scripts / "word_overlap.py"
    score = build_source({"name": "evaluate", "metric": str(path), "key": "overlap"})
    expected = [own(path, predictions=[y], references=[r])["overlap"] for y, r in zip(RESPONSES, REFS)]
    assert score(DOCS, RESPONSES, REFS) == expected
    assert expected != [own(path, predictions=RESPONSES, references=REFS)["overlap"]] * 3  # not the batch mean
    assert score(DOCS[:1], RESPONSES[:1], REFS[:1]) == expected[:1]


def test_against_document_and_a_metric_that_takes_sources(scripts):
    overlap = build_source({"name": "evaluate", "metric": str(scripts / "word_overlap.py"), "key": "per_item",
                            "against": "document"})
    assert overlap(DOCS, RESPONSES, REFS) == own(scripts / "word_overlap.py", predictions=RESPONSES,
                                                 references=DOCS)["per_item"]
    sourced = build_source({"name": "evaluate", "metric": str(scripts / "sourced.py")})  # one entry: no key needed
    assert sourced(DOCS, RESPONSES, REFS) == own(scripts / "sourced.py", sources=DOCS, predictions=RESPONSES,
                                                 references=[[r] for r in REFS])["score"]


def test_mistakes_are_one_line(scripts):
    path = str(scripts / "word_overlap.py")
    with pytest.raises(ValueError, match="the spec needs 'metric: "):
        build_source({"name": "evaluate"})
    with pytest.raises(ValueError, match="unknown option 'kwarg'.*Did you mean 'kwargs'"):
        build_source({"name": "evaluate", "metric": path, "kwarg": {}})
    with pytest.raises(ValueError, match=r"cannot load metric 'no_such_metric_here' \(.*\); offline, give the path"):
        build_source({"name": "evaluate", "metric": "no_such_metric_here"})
    with pytest.raises(RegistryError, match="returns overlap, per_item; set key: to the one that is the reward"):
        build_source({"name": "evaluate", "metric": path})(DOCS, RESPONSES, REFS)
    with pytest.raises(RegistryError, match=r"has no 'f1' in its result \(it has overlap, per_item\)"):
        build_source({"name": "evaluate", "metric": path, "key": "f1"})(DOCS, RESPONSES, REFS)
    with pytest.raises(RegistryError, match="metric '.*' raised TypeError"):
        build_source({"name": "evaluate", "metric": path, "key": "overlap", "kwargs": {"bogus": 1}})(
            DOCS, RESPONSES, REFS)


def test_a_tiny_online_run_transfers_by_the_metric(scripts, tmp_path, monkeypatch):
    """Every block transfers by the metric (selector fixed); what the source returned in the run equals the
    metric's own compute on the same responses and references."""
    from pipeline.__main__ import main
    from pipeline.transfer import ScoreCache

    seen = []
    scores = ScoreCache.scores

    def spy(self, arm, rows, responses):
        out = scores(self, arm, rows, responses)
        seen.append((arm, rows, responses, out))
        return out

    monkeypatch.setattr(ScoreCache, "scores", spy)
    path = scripts / "word_overlap.py"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(tiny_run_recipe("tests/test_evaluate_source.py", "evaluate", online={
        "iterations": 1, "sources": [{"name": "evaluate", "label": "overlap", "metric": str(path), "key": "per_item"}],
        "selector": {"name": "fixed", "params": {"arm": "overlap"}}}))
    assert main(["run", str(recipe), f"run_dir={tmp_path / 'run'}", "--stage", "online"]) == 0
    blocks = list(csv.DictReader(open(tmp_path / "run" / "online" / "iter_1" / "arms.csv")))
    assert [b["arm"] for b in blocks] == ["overlap"] * len(blocks)
    assert sum(len(ys) for _, _, responses, _ in seen for ys in responses) == 8 * 2  # 8 prompts x a pool of 2
    for arm, rows, responses, out in seen:
        flat = [(r["summary"], y) for r, ys in zip(rows, responses) for y in ys]
        expected = own(path, predictions=[y for _, y in flat], references=[r for r, _ in flat])["per_item"]
        assert arm == "overlap" and [s for ss in out for s in ss] == pytest.approx(expected, abs=0)

