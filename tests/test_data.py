import json
from pathlib import Path

import pytest

from pipeline.config import ConfigError, DataConfig
from pipeline.data import DataError, load_rows, load_split, run_data

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "xsum" / "xsum_sample.jsonl"


def test_synthetic_splits_are_disjoint_and_sized(tmp_path):
    cfg = DataConfig(n_examples=300, eval_size=40, test_size=60)
    report = run_data(cfg, tmp_path)
    train, ev, test = (load_split(tmp_path, s) for s in ("train", "eval", "test"))
    assert (len(train), len(ev), len(test)) == (200, 40, 60) == (report["n_train"], report["n_eval"], report["n_test"])
    ids = [r["id"] for r in train + ev + test]
    assert len(set(ids)) == 300
    assert all("facts" in r for r in test)


def test_local_jsonl_with_bad_rows(tmp_path):
    p = tmp_path / "d.jsonl"
    rows = [{"id": str(i), "document": "word " * (5 if i != 3 else 50), "summary": "s"} for i in range(30)]
    rows.append({"id": "1", "document": "dup", "summary": "dup"})
    rows.append({"id": "x", "document": "", "summary": "empty doc"})
    p.write_text("\n".join(json.dumps(r) for r in rows))
    splits, report = load_rows(DataConfig(source="local", path=str(p), eval_size=5, test_size=5,
                                          max_document_words=20))
    assert report["skipped_duplicate_id"] == 1 and report["skipped_empty"] == 1 and report["truncated"] == 1
    assert sum(len(v) for v in splits.values()) == 30


def test_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_rows(DataConfig(source="local", path=str(tmp_path / "none.jsonl")))
    with pytest.raises(ConfigError, match="data.path is required"):
        load_rows(DataConfig(source="local"))
    p = tmp_path / "cols.jsonl"
    p.write_text(json.dumps({"id": "1", "text": "t"}) + "\n")
    with pytest.raises(DataError, match="lacks column"):
        load_rows(DataConfig(source="local", path=str(p)))
    with pytest.raises(DataError, match="offline alternatives"):
        load_rows(DataConfig(source="hub", path="EdinburghNLP/xsum"))


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data is absent")
def test_shared_xsum_sample_uses_its_split_column():
    splits, report = load_rows(DataConfig(source="local", path=str(SHARED), n_examples=0))
    assert len(splits["train"]) == 713 and len(splits["eval"]) + len(splits["test"]) == 200
    assert all(r["document"] and r["summary"] for r in splits["test"])
