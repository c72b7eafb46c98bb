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


def _rows_file(tmp_path, n=30):
    p = tmp_path / "d.jsonl"
    rows = [{"id": f"bbc{i}", "document": f"Article {i} says the council met on day {i}. " * (3 if i != 7 else 40),
             "summary": f"summary {i}"} for i in range(n)]
    p.write_text("\n".join(json.dumps(r) for r in rows))
    return p, rows


def _all_ids(splits):
    return [r["id"] for rows in splits.values() for r in rows]


def test_exclude_docs_of_a_learned_judge_leaves_its_documents_out(tmp_path):
    """By id, or by text under another id (long documents compared before they are cut), in every split; the
    checkpoint's own record (pipeline/documents.py, as eval/learned_judge.py writes it) names them."""
    from pipeline.documents import TRAINING_RECORD, document_keys

    path, rows = _rows_file(tmp_path)
    judge = tmp_path / "judge_model"
    judge.mkdir()
    renamed = {**rows[7], "id": "another-id"}  # row 7's text (400+ words, truncated below) under another id
    seen = document_keys([rows[2], rows[11], renamed])
    (judge / TRAINING_RECORD).write_text(json.dumps({"documents": sorted(seen)}))
    cfg = DataConfig(source="local", path=str(path), eval_size=4, test_size=4, max_document_words=50,
                     exclude_docs_of=str(judge))
    splits, report = load_rows(cfg)
    ids = _all_ids(splits)
    assert report["excluded_document"] == 3 and len(ids) == 27
    assert not {"bbc2", "bbc7", "bbc11"} & set(ids)
    assert report["n_train"] + report["n_eval"] + report["n_test"] == 27


def test_exclude_docs_of_a_jsonl_file_and_its_errors(tmp_path):
    path, rows = _rows_file(tmp_path)
    other = tmp_path / "judgments.jsonl"
    other.write_text("\n".join(json.dumps(r) for r in [
        {"id": "bbc0", "document": None, "system": "A"},  # a null document still names its id
        {"id": "x", "document": rows[5]["document"]}, {"id": "bbc0", "document": rows[0]["document"]}]))
    splits, report = load_rows(DataConfig(source="local", path=str(path), eval_size=4, test_size=4,
                                          exclude_docs_of=str(other)))
    assert report["excluded_document"] == 2 and not {"bbc0", "bbc5"} & set(_all_ids(splits))
    plain = DataConfig(source="local", path=str(path), eval_size=4, test_size=4)
    assert load_rows(plain)[1]["excluded_document"] == 0  # off by default
    with pytest.raises(DataError, match=r"^data.exclude_docs_of .*nothing: no such file or directory$"):
        load_rows(DataConfig(source="local", path=str(path), exclude_docs_of=str(tmp_path / "nothing")))
    with pytest.raises(DataError, match="a directory without judge_training.json"):
        load_rows(DataConfig(source="local", path=str(path), exclude_docs_of=str(tmp_path)))
    other.write_text('{"document": "no id"}\n')
    with pytest.raises(DataError, match=r"judgments.jsonl:1 has no 'id'"):
        load_rows(DataConfig(source="local", path=str(path), exclude_docs_of=str(other)))
    other.write_text('{"id": "a", "document": "x"}\n\n{"id": \n')  # blank lines do not count as rows
    with pytest.raises(DataError, match=r"^data.exclude_docs_of .*judgments.jsonl:3 is not valid JSON \("):
        load_rows(DataConfig(source="local", path=str(path), exclude_docs_of=str(other)))


def test_a_run_started_before_exclude_docs_of_existed_resumes_as_it_was(tmp_path):
    """Its config.yaml and stages.json lack the key: at its default the run is neither refused nor redone."""
    import yaml

    from pipeline.config import load_recipe, to_dict
    from pipeline.runner import fingerprint, prepare_run_dir

    recipe = load_recipe(None, [f"run_dir={tmp_path}", "data.n_examples=40"])
    old = to_dict(recipe)
    del old["data"]["exclude_docs_of"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "DONE").write_text("{}")
    (tmp_path / "stages.json").write_text(json.dumps({"data": fingerprint(old, "data")}))
    prepare_run_dir(recipe)  # neither 'recipe changed' nor a stale data stage
    assert (tmp_path / "data" / "DONE").exists()
    other = load_recipe(None, [f"run_dir={tmp_path}", "data.n_examples=40", "data.exclude_docs_of=judge"])
    with pytest.raises(ConfigError, match=r"recipe changed since .*\(data.exclude_docs_of\); --force redoes data"):
        prepare_run_dir(other)
