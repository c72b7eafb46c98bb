"""The learned judge on planted judgments: document-disjoint folds, the refusal to evaluate a judge on documents it
was trained on, and a tiny cross-encoder (built from a config, MiniLM's tokenizer) that learns the planted preference
(summaries with words the document lacks are worse) and scores the same through the reward_model judge."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from eval.agreement import main as validate_main
from eval.agreement_metrics import agreement
from eval.judgments import load_judgments
from eval.learned_judge import Options, Trainer, doc_folds, save_judge
from eval.learned_judge import main as judge_main
from pipeline.documents import document_key

TOPICS = ("council budget school road bridge river market farm hospital court police museum station harbour "
          "festival library stadium factory airport village").split()
INVENTED = "zeppelin quasar walrus obelisk marzipan tundra gondola nebula".split()


def write_planted(path: Path, n_docs: int, start: int = 0, seed: int = 0) -> Path:
    """n_docs documents x 4 systems. A summary takes words from its document and k invented ones (k = 0..3, a
    different k per system in each document); people score the share of supported words."""
    rng = np.random.default_rng(seed + start)
    rows = []
    for d in range(start, start + n_docs):
        words = list(rng.choice(TOPICS, size=8, replace=False))
        document = "\n".join(f"The {w} report was published on day {d}." for w in words)
        for system, k in zip("ABCD", rng.permutation(4)):
            summary = " ".join(list(rng.choice(words, size=6 - k, replace=False))
                               + list(rng.choice(INVENTED, size=k, replace=False)))
            rows.append({"id": f"doc{d}", "document": document, "reference": f"the {words[0]} report",
                         "system": system, "summary": summary, "human_score": 1 - k / 6})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> str:
    """A 2-layer BERT with MiniLM's tokenizer, from a config: trains in seconds, no download."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from reward_sources.bertscore import minilm_dir

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, num_labels=1)
    folder = tmp_path_factory.mktemp("tiny_base")
    BertForSequenceClassification(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny_judge(tiny_base, tmp_path_factory):
    """(checkpoint dir, training file, trainer, fitted net) of a tiny judge fitted on 24 planted documents."""
    folder = tmp_path_factory.mktemp("tiny_judge")
    train_file = write_planted(folder / "train.jsonl", 24)
    rows, _ = load_judgments(train_file)
    opts = Options(max_length=64, train_layers=2, epochs=8, lr=2e-3, docs_per_step=4)
    trainer = Trainer(rows, tiny_base, opts)
    net, _ = trainer.fit(np.arange(len(rows)))
    model_dir = save_judge(net, trainer.tok, folder, rows, str(train_file), opts, {})
    return model_dir, train_file, trainer, net


def test_folds_are_document_disjoint(tmp_path):
    rows, _ = load_judgments(write_planted(tmp_path / "j.jsonl", 11))
    # the same text under another id is the same document: it must not land in another fold
    rows += [dict(rows[0], id="alias-of-doc0", system="E")]
    folds = doc_folds(rows, 3)
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(rows)))  # every row in exactly one fold
    fold_of = {}
    for f, idx in enumerate(folds):
        for i in idx:
            key = document_key(rows[i]["document"])
            assert fold_of.setdefault(key, f) == f, "a document in two folds"
    assert sorted(len({document_key(rows[i]["document"]) for i in idx}) for idx in folds) == [3, 4, 4]
    with pytest.raises(ValueError, match="--folds"):
        doc_folds(rows, 1)


def test_tiny_judge_learns_planted_preference(tiny_judge, tmp_path):
    model_dir, _, trainer, net = tiny_judge
    # documents it never saw, through the ordinary reward_model judge that loads the checkpoint by path
    from reward_sources import build_judge

    fresh, _ = load_judgments(write_planted(tmp_path / "fresh.jsonl", 12, start=100))
    judge = build_judge("reward_model", {"model": str(model_dir)})
    scores = np.array(judge.score(fresh, [r["summary"] for r in fresh]))
    res = agreement(fresh, scores, n_boot=200)
    assert res["pairwise_acc"] > 0.75 and res["ci_low"] > 0.5, res
    # the training shortcut (cached frozen layers) scores exactly what the saved checkpoint scores
    rows = trainer.rows[:8]
    cached = trainer.predict(net, np.arange(8))
    assert np.allclose(judge.score(rows, [r["summary"] for r in rows]), cached, atol=1e-4)


def test_cross_fitting_cli_beats_chance(tiny_base, tmp_path):
    path = write_planted(tmp_path / "j.jsonl", 30)
    out = tmp_path / "out"
    assert judge_main(["train", str(path), "--base", tiny_base, "--out", str(out), "--folds", "3",
                       "--loso-folds", "2", "--baselines", "rouge2", "--max-length", "64", "--train-layers", "2",
                       "--epochs", "8", "--lr", "2e-3", "--bootstrap", "200"]) == 0
    report = json.loads((out / "crossfit.json").read_text())
    learned = next(r for r in report["results"] if r["scorer"] == "learned_oof")
    assert learned["pairwise_acc"] > 0.7 and learned["ci_low"] > 0.5, learned
    assert [r["system"] for r in report["loso"]] == list("ABCD")
    assert (out / "model" / "config.json").is_file() and "Leave one system out" in (out / "crossfit.md").read_text()
    assert "document" not in (out / "oof_scores.csv").read_text().splitlines()[0]  # no text copied


def test_overlapping_train_and_eval_files_refused(tiny_judge, tmp_path, capsys):
    model_dir, train_file, _, _ = tiny_judge
    train_rows = train_file.read_text().splitlines()
    # an evaluation file with 6 of the training documents (renamed ids: same text) and 10 new ones
    overlap = [json.loads(line) for line in train_rows[:24]]
    for r in overlap:
        r["id"] = "renamed-" + r["id"]
    eval_file = write_planted(tmp_path / "eval.jsonl", 10, start=200)
    with eval_file.open("a") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in overlap))
    args = [str(eval_file), "--scorers", f"learned:{model_dir}", "--out", str(tmp_path / "v"), "--threads", "1",
            "--bootstrap", "100"]
    assert validate_main(args) == 2
    assert "trained on 6 of this file's documents" in capsys.readouterr().err
    assert validate_main(args + ["--exclude-docs-of", str(model_dir)]) == 0  # its own record names them too
    assert validate_main(args + ["--exclude-docs-of", str(train_file)]) == 0
    md = (tmp_path / "v" / "agreement.md").read_text()
    assert "40 summaries of 10 documents" in md and "24 whose document is also in" in md
