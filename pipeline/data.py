"""Data stage: prompts with reference summaries, one schema (`id`, `document`, `summary`, optional metadata),
from three sources behind one loader: the synthetic world, a local JSON/JSONL file, or a hub dataset.

Local files and hub datasets go through the same `datasets` code path and the same normalisation, so the
shared XSum sample (same schema as EdinburghNLP/xsum plus `split`) exercises the real-data path offline.
"""
from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path

from pipeline import world
from pipeline.config import ConfigError, DataConfig
from pipeline.documents import documents_of, shares_document
from pipeline.durable import atomic_write_text

log = logging.getLogger(__name__)
SPLITS = ("train", "eval", "test")
_SPLIT_ALIASES = {"train": "train", "validation": "eval", "valid": "eval", "eval": "eval", "test": "test"}


class DataError(ValueError):
    pass


def _normalise(raw_rows, origin: str, cfg: DataConfig, report: dict, exclude=frozenset()) -> list[dict]:
    """Rows in the one schema; empty, duplicate and excluded (`exclude`: document keys, pipeline/documents.py)
    rows are left out and counted, long documents cut (after the exclusion check, which compares full texts)."""
    rows, seen = [], set()
    for i, r in enumerate(raw_rows):
        missing = [c for c in ("document", "summary") if c not in r]
        if missing:
            raise DataError(f"{origin}: row {i} lacks column(s) {missing}; need id, document, summary")
        doc, summ = r["document"], r["summary"]
        if not isinstance(doc, str) or not doc.strip() or not isinstance(summ, str) or not summ.strip():
            report["skipped_empty"] += 1
            continue
        rid = str(r.get("id", i))
        if rid in seen:
            report["skipped_duplicate_id"] += 1
            continue
        seen.add(rid)
        if exclude and shares_document({"id": rid, "document": doc}, exclude):
            report["excluded_document"] += 1
            continue
        words = doc.split(" ")
        if len(words) > cfg.max_document_words:
            doc = " ".join(words[: cfg.max_document_words])
            report["truncated"] += 1
        rows.append({**{k: v for k, v in r.items() if k not in ("id", "document", "summary")},
                     "id": rid, "document": doc, "summary": summ.strip()})
    return rows


def _check_utf8(path: Path) -> None:
    """A non-UTF-8 byte is a one-line DataError naming the file and line (not a skip: a wrong encoding usually
    garbles many rows, and silently dropping them would bias the data)."""
    with open(path, "rb") as fh:
        for n, line in enumerate(fh, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"data file '{path}' line {n} is not valid UTF-8 (byte 0x{line[e.start]:02x} at "
                                f"column {e.start + 1}); re-save the file as UTF-8") from None


def _from_datasets(cfg: DataConfig) -> dict[str, list]:
    """Local JSON/JSONL or a hub dataset, via `datasets`; returns raw rows per split name."""
    import datasets

    if cfg.source == "local":
        path = Path(cfg.path)
        if not path.exists():
            raise DataError(f"data file '{path}' does not exist")
        if path.suffix not in (".json", ".jsonl"):
            raise DataError(f"data file '{path}' must be .json or .jsonl")
        _check_utf8(path)
        try:
            ds = datasets.load_dataset("json", data_files=str(path), split="train")
        except Exception as e:  # pyarrow's messages are long; keep the first line
            raise DataError(f"cannot read '{path}' as JSON lines: {str(e).splitlines()[0][:200]}") from None
        return {"all": list(ds)}
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise DataError(f"hub dataset '{cfg.path}' requested while offline (HF_HUB_OFFLINE=1); offline alternatives: "
                        "data.source=synthetic, or data.source=local data.path=<file.jsonl>")
    try:
        dd = datasets.load_dataset(cfg.path, cfg.hub_config)
    except Exception as e:
        raise DataError(f"cannot load hub dataset '{cfg.path}': {str(e).splitlines()[0][:200]}") from None
    return {name: list(split) for name, split in dd.items()}


def load_rows(cfg: DataConfig) -> tuple[dict[str, list[dict]], dict]:
    """Rows per split (train/eval/test) and a report of what was skipped or truncated."""
    report = {"source": cfg.source, "skipped_empty": 0, "skipped_duplicate_id": 0, "excluded_document": 0,
              "truncated": 0}
    if cfg.source == "synthetic":
        raw = {"all": world.generate(cfg.n_examples, cfg.world, cfg.seed)}
    elif cfg.source in ("local", "hub"):
        if not cfg.path:
            raise ConfigError(f"data.path is required when data.source={cfg.source}")
        raw = _from_datasets(cfg)
    else:
        raise ConfigError(f"unknown data.source '{cfg.source}'")
    exclude = frozenset()
    if cfg.exclude_docs_of:  # after the data: a missing data file is named first
        try:
            exclude = documents_of(cfg.exclude_docs_of, "data.exclude_docs_of")
        except ValueError as e:
            raise DataError(str(e)) from None

    # Respect given splits (a `split` column or the hub's own), otherwise carve eval/test from a seeded shuffle.
    by_split: dict[str, list] = {s: [] for s in SPLITS}
    unsplit = []
    for name, rows in raw.items():
        for r in rows:
            split = _SPLIT_ALIASES.get(str(r.get("split", name)))
            (by_split[split] if split else unsplit).append(r)
    origin = cfg.source if cfg.source == "synthetic" else f"{cfg.source} '{cfg.path}'"
    splits = {s: _normalise(by_split[s], f"{origin} split {s}", cfg, report, exclude) for s in SPLITS}
    rest = _normalise(unsplit, origin, cfg, report, exclude)
    rng = random.Random(cfg.seed)
    rng.shuffle(rest)
    if rest:
        n_eval = cfg.eval_size if not splits["eval"] else 0
        n_test = cfg.test_size if not splits["test"] else 0
        splits["eval"] += rest[:n_eval]
        splits["test"] += rest[n_eval : n_eval + n_test]
        splits["train"] += rest[n_eval + n_test :]
    if not splits["test"] and len(splits["eval"]) >= 2:  # e.g. the XSum sample ships train/eval only
        half = len(splits["eval"]) // 2
        splits["eval"], splits["test"] = splits["eval"][:half], splits["eval"][half:]
    if cfg.n_examples and cfg.source != "synthetic":
        splits["train"] = splits["train"][: cfg.n_examples]
    for s in SPLITS:
        report[f"n_{s}"] = len(splits[s])
    if not splits["train"]:
        raise DataError(f"no training rows after loading {cfg.source} data ({report})")
    return splits, report


def write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(path.suffix + f".tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def run_data(cfg: DataConfig, out_dir: Path) -> dict:
    """The data stage: writes <out>/{train,eval,test}.jsonl and report.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    splits, report = load_rows(cfg)
    for s in SPLITS:
        write_jsonl(out_dir / f"{s}.jsonl", splits[s])
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2))
    log.info("data: %s", report)
    return report


def load_split(data_dir: Path, split: str) -> list[dict]:
    return read_jsonl(Path(data_dir) / f"{split}.jsonl")
