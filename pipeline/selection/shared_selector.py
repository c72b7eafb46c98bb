"""A shared multi-task reward model in the online loop (D'Eramo et al.; docs/algorithms.md §5). The model is
pipeline/selection/shared.py.

The judge labels the K online responses (the label budget of no transfer); one SharedRewardModel over encoder
features with a regression head per source (standardised scores of every candidate) and a BT head for the judge
(pairs of its labels), trained with equal per-task minibatches (`shared.train`); scores = the judge head's proxy
scores, so pairs are the proxy's best vs worst. Cross-fitted (`folds`, inferred): a prompt is scored by a model
trained without that prompt's judge labels, so the proxy generalises the judge rather than echoing its noise on
the very responses it ranks.

`single_task` is the natural baseline: the same model, features, judge labels, folds and steps, but only the
judge's BT head is trained (no source-score regression tasks), so what sharing adds is isolated.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from pipeline.config import f
from pipeline.selection.base import (
    ArmOption,
    EncoderOptions,
    LabelContext,
    LoopSelector,
    blas_threads,
    candidate_pairs,
    standardised_scores,
)
from pipeline.selection.shared import SharedRewardModel, TaskData, train


@dataclass
class SharedOptions(EncoderOptions, ArmOption):
    hidden: int = f(64, ge=1, help="width of the shared trunk")
    rep_dim: int = f(8, ge=1, help="dimension of the shared representation")
    steps: int = f(300, ge=1, help="training steps of the multi-task model per iteration and fold")
    batch_size: int = f(32, ge=1, help="minibatch per task and step")
    lr: float = f(3e-3, gt=0, help="Adam learning rate")
    adapter: Literal["affine", "linear"] = f("affine", "per-task input adapter")
    folds: int = f(2, ge=1, help="cross-fitting folds (a prompt is scored by a model trained without its judge labels)")
    single_task: bool = f(False, "baseline: train the judge head alone on the same labels (no source tasks)")


class SharedSelector(LoopSelector):
    """A shared multi-task reward model (judge + sources); pairs ranked by its cross-fitted judge head."""

    Options = SharedOptions

    def __init__(self, arms: list[str], seed: int, opts: SharedOptions):
        o = opts
        super().__init__(arms, seed, o.arm, 0, "encoder", o.dim, o.encoder)
        self.hidden, self.rep_dim, self.steps, self.batch_size = o.hidden, o.rep_dim, o.steps, o.batch_size
        self.lr, self.adapter, self.folds, self.single_task = o.lr, o.adapter, o.folds, o.single_task

    @property
    def tasks(self) -> list[str]:
        """The model's tasks after the judge: every source, none for the single-task baseline."""
        return [] if self.single_task else list(self.arms)

    def _train(self, phi, pairs, judged, z, prompts: set, fold: int):
        """The proxy trained on the judge pairs of `prompts` and on every candidate's source scores."""
        mine = [(p, i, j) for p, i, j in pairs if p in prompts]
        bt = TaskData("bt", X1=np.array([phi[p][i] for p, i, _ in mine]), X0=np.array([phi[p][j] for p, _, j in mine]),
                      y=np.array([float(judged[p][i] > judged[p][j]) for p, i, j in mine]))
        X_all = np.vstack(phi)
        data = {0: bt, **{m_idx: TaskData("regression", X=X_all, y=np.concatenate(z[m]))
                          for m_idx, m in enumerate(self.tasks, 1)}}
        torch.manual_seed(self.seed * 1000 + self.t * 10 + fold)
        model = SharedRewardModel(X_all.shape[1], ["bt"] + ["regression"] * len(self.tasks), self.hidden,
                                  self.rep_dim, self.adapter)
        history = train(model, data, self.steps, self.batch_size, self.lr, seed=self.seed * 1000 + self.t * 10 + fold)
        return model, history

    def label(self, ctx: LabelContext):
        judged = super().label(ctx)  # the judge labels the K online responses: the same budget as no transfer
        cands = [list(ys) + list(ps) for ys, ps in zip(ctx.online, ctx.pool)]  # sources also score any pool
        t0 = time.perf_counter()
        with blas_threads():
            phi = self.features.fit_transform(ctx, ctx.rows, cands)
            pairs = [(p, i, j) for p, i, j in candidate_pairs(ctx.online)
                     if judged[p][i] is not None and judged[p][j] is not None and judged[p][i] != judged[p][j]]
            if not pairs:
                self.record(note="no judge pairs to train the proxy on; judge scores used")
                return judged
            z = standardised_scores(ctx, self.tasks, ctx.rows, cands)
            t1 = time.perf_counter()
            # Cross-fitting: a prompt's proxy scores come from a model that never saw that prompt's judge labels,
            # so the proxy generalises the judge instead of echoing its noise (folds = 1: one model on all).
            fold_of = self.rng("shared-folds").permutation(len(ctx.rows)) % self.folds
            scores = [None] * len(ctx.rows)
            held, models, histories = [], [], []
            for fold in range(self.folds):
                train_on = {p for p in range(len(ctx.rows)) if self.folds == 1 or fold_of[p] != fold}
                model, history = self._train(phi, pairs, judged, z, train_on, fold)
                models.append(model)
                histories.append(history)
                with torch.no_grad():
                    for p in np.flatnonzero(fold_of == fold):
                        x = torch.as_tensor(phi[p][: len(ctx.online[p])], dtype=torch.float32)
                        scores[p] = model.score(0, x).numpy().astype(float)
                held += [(p, i, j) for p, i, j in pairs if fold_of[p] == fold]
        agree = float(np.mean([(scores[p][i] > scores[p][j]) == (judged[p][i] > judged[p][j]) for p, i, j in held]))
        self.last = {"models": models, "fold_of": fold_of, "phi": phi, "scores": scores, "judged": judged}
        self.record(judge_pairs=len(pairs), folds=self.folds, heldout_proxy_judge_agreement=agree,
                    loss_first=[h[0] for h in histories], loss_last=[h[-1] for h in histories],
                    tasks=["judge"] + self.tasks, features_dim=int(phi[0].shape[1]), features_s=t1 - t0,
                    fit_select_s=time.perf_counter() - t1)
        return [s.tolist() for s in scores]
