"""Which documents two files share: by id (XSum's BBC id) or by text, and which documents a learned judge saw.

Used where a document must not be on both sides of a line: `make validate --exclude-docs-of` (agreement on judgments
a learned judge never saw, eval/judgments.py) and the data stage's `data.exclude_docs_of` (prompts the judge was
not trained on). A learned judge's checkpoint records the keys of its training documents (TRAINING_RECORD, written
by eval/learned_judge.py): ids and text hashes, never the text.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

TRAINING_RECORD = "judge_training.json"  # in a learned judge's checkpoint: what it was trained on


def document_key(text: str) -> str:
    """Text identity of a document across files that name it differently (ids are not always shared)."""
    return hashlib.sha1(" ".join((text or "").lower().split()).encode("utf-8")).hexdigest()[:16]


def document_keys(rows: list[dict]) -> set[str]:
    """Every id and text key of the rows' documents: two files share a document when either matches."""
    return {r["id"] for r in rows} | {"text:" + document_key(r["document"]) for r in rows}


def shares_document(row: dict, keys) -> bool:
    """Whether the row's document is among document_keys() `keys` (by id or by text)."""
    return str(row["id"]) in keys or "text:" + document_key(row["document"]) in keys


def json_lines(path, error: type[Exception] = ValueError, where: str = ""):
    """(line number, parsed value) of each non-blank line of a JSON-lines file; a line that is not JSON raises
    `error` with one line naming the file and line (`where` prefixes it, e.g. the option that named the file)."""
    with Path(path).open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{where}{path}:{n} is not valid JSON ({e.msg})") from None
            yield n, value


def training_documents(model_dir: str) -> set[str] | None:
    """document_keys() a learned judge was trained on (from its checkpoint's record), or None for other models."""
    record = Path(model_dir) / TRAINING_RECORD
    if not record.is_file():
        return None
    return set(json.loads(record.read_text(encoding="utf-8"))["documents"])


def documents_of(path: str, what: str) -> set[str]:
    """document_keys() of what `path` names: a learned judge's checkpoint directory (its training record), or a
    JSON-lines file whose rows have an `id` and a `document` (a row with a null document counts by its id). `what`
    names the option in the one-line ValueError (a missing file, a directory that is not a learned judge, a row
    that is not JSON or lacks `id`)."""
    p = Path(path)
    if p.is_dir():
        seen = training_documents(path)
        if seen is None:
            raise ValueError(f"{what} {path}: a directory without {TRAINING_RECORD} (not a learned judge)")
        return seen
    if not p.is_file():
        raise ValueError(f"{what} {path}: no such file or directory")
    keys = set()
    for n, row in json_lines(p, where=f"{what} "):
        if not isinstance(row, dict) or row.get("id") is None:
            raise ValueError(f"{what} {path}:{n} has no 'id'; need rows with id and document")
        keys.add(str(row["id"]))
        if isinstance(row.get("document"), str):
            keys.add("text:" + document_key(row["document"]))
    return keys
