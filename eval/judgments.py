"""Human judgments of summaries: reading a file, and which documents two files share.

Input rows: {id, document, reference, system, summary, human_score} (extra fields ignored; --columns reads one under
another name). Rows whose document is null are skipped and counted. A learned judge's checkpoint records the
documents it was trained on (pipeline/documents.py); agreement on those documents is refused.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

# document identity lives with the data stage, which leaves a learned judge's documents out too (data.exclude_docs_of)
from pipeline.documents import document_keys, documents_of, json_lines, shares_document, training_documents

REQUIRED = ("id", "document", "reference", "system", "summary", "human_score")


class AgreementError(ValueError):
    """A user mistake (missing file or column, unknown scorer): printed as one line."""


def parse_columns(text: str) -> dict[str, str]:
    """{our column: the file's column} from 'reference=reference_tok,...'."""
    out = {}
    for item in filter(None, (x.strip() for x in (text or "").split(","))):
        ours, _, theirs = item.partition("=")
        if ours not in REQUIRED or not theirs:
            raise AgreementError(f"--columns '{item}': write NAME=FILE_COLUMN with NAME one of {', '.join(REQUIRED)}")
        out[ours] = theirs
    return out


def load_judgments(path: str | Path, max_docs: int = 0, exclude_systems=(), exclude_docs=frozenset(),
                   columns: dict | None = None) -> tuple[list[dict], dict]:
    """Rows with a document, grouped by document id in file order; counts of what was skipped.
    exclude_docs: document_keys() of documents to leave out (e.g. a learned judge's training documents).
    columns: {our column: the file's name for it} (see --columns)."""
    path = Path(path)
    if not path.is_file():
        raise AgreementError(f"judgments file {path} not found")
    rows, skipped = [], {"null_document": 0, "null_summary_or_score": 0, "excluded_system": 0, "excluded_document": 0}
    for n, row in json_lines(path, AgreementError):
        if columns:
            row = {**row, **{ours: row[theirs] for ours, theirs in columns.items() if theirs in row}}
        missing = [c for c in REQUIRED if c not in row]
        if missing:
            raise AgreementError(f"{path}:{n} lacks column(s) {', '.join(missing)}; need {', '.join(REQUIRED)} "
                                 "(--columns NAME=FILE_COLUMN reads one under another name)")
        if row["document"] is None:
            skipped["null_document"] += 1
        elif row["summary"] is None or row["human_score"] is None:
            skipped["null_summary_or_score"] += 1
        elif row["system"] in exclude_systems:
            skipped["excluded_system"] += 1
        elif exclude_docs and shares_document(row, exclude_docs):
            skipped["excluded_document"] += 1
        else:
            rows.append({"id": str(row["id"]), "document": row["document"], "reference": row["reference"],
                         "system": str(row["system"]), "summary": row["summary"],
                         "human_score": float(row["human_score"])})
    order = list(OrderedDict.fromkeys(r["id"] for r in rows))
    if max_docs:
        order = order[:max_docs]
    rank = {d: i for i, d in enumerate(order)}
    # grouped by document (files are often ordered by system): scorers that share work per document need it
    rows = sorted((r for r in rows if r["id"] in rank), key=lambda r: rank[r["id"]])
    if not rows:
        raise AgreementError(f"{path} has no usable rows (skipped: {skipped})")
    return rows, skipped


def excluded_documents(path: str) -> set[str]:
    """document_keys() of a judgments file, or the training documents of a learned judge's checkpoint directory."""
    try:
        return documents_of(path, "--exclude-docs-of")
    except ValueError as e:
        raise AgreementError(str(e)) from None


def refuse_seen_documents(scorers, rows: list[dict]) -> None:
    """Agreement on documents a judge was trained on is not agreement on judgments it never saw."""
    keys = document_keys(rows)
    for label, _, reg_name, spec in scorers:
        if reg_name != "reward_model" or not spec.get("model"):
            continue
        seen = training_documents(str(spec["model"]))
        if seen and keys & seen:
            n = len({r["id"] for r in rows if shares_document(r, seen)})
            raise AgreementError(f"{label} was trained on {n} of this file's documents; pass --exclude-docs-of "
                                 "TRAINING_FILE to evaluate on the others only")


def doc_groups(rows: list[dict]) -> list[list[int]]:
    groups: OrderedDict[str, list[int]] = OrderedDict()
    for i, r in enumerate(rows):
        groups.setdefault(r["id"], []).append(i)
    return list(groups.values())
