"""Co-training of the ranking tower and the zero-shot tower: the loop and what it feeds on.

Two optimizers step on every batch (the paper's G_A and G_B): one on L_rt for the embeddings and
the ranking tower, one on L_zst = L_a + L_v + L_d for the zero-shot tower only. Every edge between
the towers is cut (`detach`): the ZST reads embeddings and the ranker's behavior representation
but never updates them, and the ranker reads virtual behavior as an input.

Cold = empty behavior (the paper's flag, Eq. 9). With `fill_train` the virtual behavior takes its
place in training as at inference (`batches.user_inputs`); otherwise only at inference (the
official code). Evaluation is `model_export.evaluation`, the run's files `model_export.checkpoint`.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor

from model_export import catalog as task
from model_export.batches import Batches, user_inputs
from model_export.evaluation import evaluate_part, rank_part, served_cases
from model_export.features import EncodedData
from model_export.model import MailModel, ModelConfig, UserInputs, zst_step_losses
from model_export.protocol import TRAIN, VAL
from service.contract import OOV, PAD, Schema

log = logging.getLogger(__name__)

LOSS_NAMES = ("L_rt", "L_a", "L_v", "L_d")


@dataclass
class TrainConfig:
    # the budget: at most `epochs`, stopping after `patience` epochs without a better validation
    # score (`select`). 20 and 3 since 2026-12-03, chosen on validation over 12 and 2 (the offline
    # benchmark's budget, which keeps them): benchmarks/results/train-budget.md
    epochs: int = 20
    batch_size: int = 512
    lr: float = 1e-3  # G_B: embeddings + ranking tower
    lr_zst: float = 5e-4  # G_A: zero-shot tower (the official code's 0.5 x lr)
    weight_decay: float = 0.0
    embed_l2: float = 1e-5  # L2 on the embeddings looked up in a batch
    patience: int = 3  # epochs without a better validation score (`select`) before stopping
    # what early stopping keeps: "ndcg-served" (validation whole-catalog NDCG@10, the catalog
    # task's product metric, of the users the kept weights will score: where a cold checkpoint
    # takes the unseen users, those it leaves, the known users on the strict protocol; all users
    # otherwise) | "ndcg" (the same over all validation users, new users included; the default
    # before 2026-12-03: benchmarks/results/select-served.md) | "auc" (validation AUC); the
    # rating task always uses AUC
    select: str = "ndcg-served"
    seed: int = 0
    threads: int = 2
    progress: bool = True
    # the task (model_export.catalog): "catalog" (rank the whole catalog; the product's) | "rating"
    task: str = "catalog"
    positives: str = "liked"  # catalog: "liked" (label 1) | "any" (every rated item)
    rated_negatives: bool = False  # catalog, liked: rated-but-not-liked rows train as negatives
    # catalog: never-interacted items sampled per positive, afresh each epoch, uniformly or by
    # popularity (training count^0.75)
    negatives: int = 16
    sampling: str = "popularity"
    # catalog: "softmax" (each positive against its `negatives` sampled items, cross-entropy over
    # the 1 + negatives logits, each corrected by the log of its sampling probability: sampled
    # softmax) | "bce" (each (user, item) row alone: liked or sampled; before 2026-12-01, with 4
    # uniform negatives). Chosen on validation: benchmarks/results/catalog-task.md
    loss: str = "softmax"
    cold_rows: float | None = None  # share of rows shown as a new user; None: catalog 0.2, rating 0
    # in those rows, the chance each user attribute (user id aside) is hidden as a user who skipped
    # the question looks (PAD): a regularizer of the cold path, and robustness to missing answers
    attr_dropout: float = 0.0
    # of those rows, the share that keep their n most recent interactions (n uniform in 1..10):
    # a new user after n clicks, the id still unknown (without them no tower ever sees an unknown
    # user with a real history, the few-shot case the service meets at a new user's first click)
    cold_history: float = 0.0
    # catalog task, selected on NDCG: new users' weights are kept from the epoch where their own
    # validation NDCG@10 peaked (patience as above); then only the user-id embeddings of known
    # users go on training, selected on all users' validation NDCG@10 (`train`: the two phases).
    # Tried, not adopted: old users lose 14-44% on validation (catalog-task.md)
    freeze_cold: bool = False
    # catalog task, selected on NDCG: beside the weights early stopping keeps (the best
    # validation NDCG@10 of the users they serve, `select`), keep those of the epoch where new
    # users' own validation NDCG@10 peaked;
    # a user with an unknown id and few clicks (`cold_clicks`) is then scored with them
    # (`History.cold_state`; exported as the bundle's cold checkpoint). None: on wherever it
    # applies (catalog task selected on NDCG, no freeze_cold); chosen on validation
    # (catalog-task.md, catalog-epochs.md)
    cold_checkpoint: bool | None = None
    # with a cold checkpoint and the ranker's item prior: what the tower learned over the prior is
    # multiplied by this in the cold checkpoint's weights
    # (`Ranker.scale_learned`; 0: the prior's list alone, 1: the tower as trained). None:
    # COLD_SCALE where the ranker has a prior and a cold checkpoint is kept, else 1. Chosen on
    # validation new users (5 seeds, control and MAIL): a quarter of the learned part beat both the
    # whole of it and none (benchmarks/results/cold-scale.md); what a tower learns over the list of
    # a user's segment from attributes alone is mostly noise on MovieLens
    cold_scale: float | None = None
    # with a cold checkpoint: it scores a user with an unknown id and fewer than this many clicks
    # (1: only before the first click). None: COLD_CLICKS where a cold checkpoint is kept, else 1.
    # Chosen on validation new users with their first n clicks known (5 seeds, control and MAIL:
    # benchmarks/results/first-clicks.md)
    cold_clicks: int | None = None

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("task", self.task, task.TASKS),
            ("positives", self.positives, task.POSITIVES),
            ("sampling", self.sampling, task.SAMPLING),
            ("select", self.select, SELECT),
            ("loss", self.loss, LOSSES),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; choose from {allowed}")
        if self.softmax and (self.rated_negatives or self.negatives < 1):
            raise ValueError("loss softmax: at least one sampled negative, and no rated negatives")
        if self.freeze_cold and not self.by_ndcg:
            raise ValueError("freeze_cold needs the catalog task selected on NDCG (new users' own score)")
        if self.cold_checkpoint and not self.by_ndcg:
            raise ValueError("cold_checkpoint needs the catalog task selected on NDCG (new users' own score)")
        if self.cold_checkpoint and self.freeze_cold:
            raise ValueError("cold_checkpoint and freeze_cold are two ways to serve new users: choose one")
        if self.cold_scale is not None and not 0.0 <= self.cold_scale <= 1.0:
            raise ValueError(f"cold_scale is a share of the learned logit, in [0, 1]: {self.cold_scale}")
        if self.cold_clicks is not None:
            if self.cold_clicks < 1:
                raise ValueError(
                    f"cold_clicks counts clicks, 1 or more (1: before the first): {self.cold_clicks}"
                )
            if self.cold_clicks != 1 and not self.keeps_cold_checkpoint:
                raise ValueError("cold_clicks says whom a cold checkpoint scores: it needs one")

    @property
    def by_ndcg(self) -> bool:
        """Whether validation is whole-catalog NDCG@10 (catalog task, `select` ndcg[-served]): the scores
        early stopping, `freeze_cold` and `cold_checkpoint` read."""
        return self.task == "catalog" and self.select in ("ndcg", "ndcg-served")

    @property
    def keeps_cold_checkpoint(self) -> bool:
        """Whether training keeps new users' own checkpoint (`cold_checkpoint`, None resolved)."""
        if self.cold_checkpoint is not None:
            return self.cold_checkpoint
        return self.by_ndcg and not self.freeze_cold

    def cold_scale_for(self, cfg: ModelConfig) -> float:
        """`cold_scale` resolved for a model: the chosen COLD_SCALE where its ranker has a prior to
        scale towards (and a cold checkpoint is kept), else 1."""
        has_prior = cfg.ranker is not None and cfg.ranker.item_prior
        if self.cold_scale is not None:
            if self.cold_scale != 1.0 and not (has_prior and self.keeps_cold_checkpoint):
                raise ValueError(
                    "cold_scale scales new users' learned logit towards the ranker's prior: it needs "
                    "a cold checkpoint and RankerConfig.item_prior"
                )
            return self.cold_scale
        return COLD_SCALE if has_prior and self.keeps_cold_checkpoint else 1.0

    @property
    def cold_clicks_resolved(self) -> int:
        """`cold_clicks`, None resolved: COLD_CLICKS where a cold checkpoint is kept, else 1."""
        if self.cold_clicks is not None:
            return self.cold_clicks
        return COLD_CLICKS if self.keeps_cold_checkpoint else 1

    @property
    def softmax(self) -> bool:
        """Whether L_rt is the sampled softmax (the catalog task's; the rating task is always BCE)."""
        return self.task == "catalog" and self.loss == "softmax"

    @property
    def cold_share(self) -> float:
        if self.cold_rows is not None:
            return self.cold_rows
        return CATALOG_COLD_ROWS if self.task == "catalog" else 0.0


CATALOG_COLD_ROWS = 0.2
COLD_SCALE = 0.25  # `TrainConfig.cold_scale`'s default, chosen on validation (cold-scale.md)
COLD_CLICKS = 6  # `TrainConfig.cold_clicks`'s default, chosen on validation (first-clicks.md)
SELECT = ("ndcg", "ndcg-served", "auc")
LOSSES = ("bce", "softmax")


class TrainHooks:
    """Opt-in extensions of `train` for the baselines (`model_export.baselines`).

    The base class changes nothing: it builds the plain `MailModel`, passes every batch through
    untouched and adds no step. A subclass may build another model around the same ranking
    tower, transform training batches (DropoutNet) or run an extra update after each step
    (MetaEmb); the losses it returns are logged beside L_rt, L_a, L_v, L_d. `log_q` is set by
    `train`: what `row_losses` needs to score a batch's rows as L_rt does (None: binary
    cross-entropy).
    """

    log_q: Tensor | None = None

    def build(self, cfg: ModelConfig, schema: Schema, catalog_features: Tensor) -> MailModel:
        return MailModel(cfg, schema, catalog_features)

    def batch(self, batch: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """A training batch (attrs, context, behavior, item, label, is_new) before the step."""
        return batch

    def after_step(self, model: MailModel, batch: tuple[Tensor, ...]) -> dict[str, float]:
        """Runs after both optimizers stepped on `batch`; returns losses to log."""
        return {}

    def after_epoch(self, model: MailModel, record: dict[str, float]) -> None:
        """Runs after each epoch's validation (`record`: the epoch's losses and validation scores),
        before early stopping reads it; must not change `model` or draw from any random stream (a
        screen reads the weights of every epoch here: `benchmarks.offline.budget`)."""


@dataclass
class History:
    epochs: list[dict[str, float]] = field(default_factory=list)  # per epoch: mean losses + val
    batches: list[dict[str, float]] = field(default_factory=list)  # per batch losses (plots)
    best_epoch: int = -1
    seconds: float = 0.0
    # with `freeze_cold`: the epoch whose weights serve new users (their best validation NDCG@10),
    # after which only known users' id embeddings trained; with `cold_checkpoint`: the epoch of
    # `cold_state`; -1 otherwise
    cold_epoch: int = -1
    # with `cold_checkpoint`: the weights of new users' best validation epoch (the model's own
    # state dict), which score a user with an unknown id and fewer than `cold_clicks` clicks,
    # their learned logit scaled by `cold_scale`
    cold_state: dict[str, Tensor] | None = None
    cold_scale: float = 1.0
    cold_clicks: int = 1


def training_rows(
    data: EncodedData, tcfg: TrainConfig, sampler: task.NegativeSampler | None, rng: np.random.Generator
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """One epoch's (rows, items, labels): the rated rows (rating task), or positives with
    negatives drawn afresh (catalog task; `model_export.catalog`). With the softmax loss, a row per
    positive and items (P, 1 + negatives): the positive's item first, then its sampled ones."""
    train = data.rows(TRAIN)
    if tcfg.task == "rating":
        return train, data.item[train], data.label[train]
    assert sampler is not None
    liked = data.label[train] == 1
    pos = train if tcfg.positives == "any" else train[liked]
    rated_neg = train[~liked] if tcfg.positives == "liked" and tcfg.rated_negatives else train[:0]
    neg = np.repeat(pos, tcfg.negatives)
    neg_items = sampler.draw(data.user[neg], rng)
    if tcfg.softmax:
        items2d = np.c_[data.item[pos], neg_items.reshape(len(pos), tcfg.negatives)]
        return pos.astype(np.int64), items2d.astype(np.int64), np.ones(len(pos), np.float32)
    rows = np.r_[pos, rated_neg, neg]
    items = np.r_[data.item[pos], data.item[rated_neg], neg_items]
    labels = np.r_[np.ones(len(pos)), np.zeros(len(rated_neg) + len(neg))].astype(np.float32)
    return rows.astype(np.int64), items.astype(np.int64), labels


def make_sampler(data: EncodedData, tcfg: TrainConfig) -> task.NegativeSampler | None:
    if tcfg.task != "catalog":
        return None
    weights = task.popularity_weights(data.item_counts) if tcfg.sampling == "popularity" else None
    return task.NegativeSampler(data.known_train, len(data.catalog), weights)


def resolve_prior(data: EncodedData, cfg: ModelConfig) -> ModelConfig:
    """`cfg` with an "auto" prior segment chosen on validation (`popular.choose_segment` among
    single-slot attributes: the attribute, or "" for the overall list, and the shrinkage), then
    whether a signup answer joins it (`popular.choose_answer`: an attribute that holds several
    values, or none, and its shrinkage)."""
    rcfg = cfg.ranker
    if rcfg is None or not rcfg.item_prior or rcfg.prior_segment != "auto":
        return cfg
    from model_export.popular import choose_answer, choose_segment

    chosen, _ = choose_segment(data, prior=True)
    field = chosen.field or ""
    answer, answer_shrink, _ = choose_answer(data, field, chosen.shrink)
    log.info(
        "prior chosen on validation: segment %s (shrink %s), answer %s (shrink %s)",
        field or "overall",
        chosen.shrink,
        answer or "none",
        answer_shrink,
    )
    resolved = replace(
        rcfg,
        prior_segment=field,
        prior_shrink=chosen.shrink,
        prior_answer=answer,
        prior_answer_shrink=answer_shrink,
    )
    return replace(cfg, ranker=resolved)


def train(
    data: EncodedData, cfg: ModelConfig, tcfg: TrainConfig, hooks: TrainHooks | None = None
) -> tuple[MailModel, History]:
    torch.manual_seed(tcfg.seed)
    torch.set_num_threads(tcfg.threads)
    # With two threads, the backward of a gather by a tensor of indices (`u[owner]`: one user's row
    # to each of its items) adds into the gradient with atomic float adds in whatever order the
    # threads reach them, so two runs of one seed part by an ulp and then drift apart (seen in CI).
    # Deterministic mode takes the serial path there; it changes nothing else this CPU code runs.
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(tcfg.seed)
    hooks = hooks or TrainHooks()
    cfg = resolve_prior(data, cfg)
    cold_scale = tcfg.cold_scale_for(cfg)
    model = hooks.build(cfg, data.schema, torch.from_numpy(data.catalog.features))
    if cfg.ranker is not None and cfg.ranker.item_prior:
        from model_export.popular import log_prior

        r = cfg.ranker
        prior = log_prior(data, r.prior_segment, r.prior_shrink, r.prior_answer, r.prior_answer_shrink)
        model.ranker.set_item_prior(torch.from_numpy(prior).float())
    batches = Batches(data, fill_new_users=cfg.model == "oracle")
    opt_rt = torch.optim.Adam(model.ranker_parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    opt_zst = (
        torch.optim.Adam(model.zst.parameters(), lr=tcfg.lr_zst, weight_decay=tcfg.weight_decay)
        if model.zst is not None and any(True for _ in model.zst.parameters())
        else None  # a parameter-free generator (mean-fill) has nothing to step
    )
    sampler = make_sampler(data, tcfg)
    log_q = sampling_log_probability(sampler) if tcfg.softmax else None
    hooks.log_q = log_q
    cold = ColdRows.for_schema(data.schema, tcfg.cold_share, tcfg.attr_dropout, tcfg.cold_history)
    history = History()
    best, best_state, stale = -math.inf, copy.deepcopy(model.state_dict()), 0
    # freeze_cold: phase 1 trains everything and early stopping tracks new users' score; where it
    # would stop, phase 2 (`warm`) starts from their best epoch's weights (all users' score then,
    # `cold_score`) and trains known users' id rows only, tracking all users' score.
    warm, cold_score = None, -math.inf
    new_best = -math.inf  # cold_checkpoint: new users' best validation NDCG@10 so far
    # select ndcg-served beside a cold checkpoint: the validation cases the kept weights score
    served = (
        {"served": served_cases(batches, data.ranking[VAL], tcfg.cold_clicks_resolved)}
        if tcfg.select == "ndcg-served" and tcfg.keeps_cold_checkpoint
        else None
    )
    if served is not None and not served["served"].any():
        raise ValueError("select ndcg-served: no validation user is left to the kept weights (all unseen)")
    started = time.perf_counter()
    from tqdm import tqdm

    for epoch in range(1, tcfg.epochs + 1):
        model.train(warm is None)  # phase 2 in eval mode: batch norms and dropout as served
        sums = dict.fromkeys(LOSS_NAMES, 0.0)
        rows, items, labels = training_rows(data, tcfg, sampler, rng)
        n_batches = math.ceil(len(rows) / tcfg.batch_size)
        bar = tqdm(
            batches.iterate(rows, tcfg.batch_size, rng, items, labels),
            total=n_batches,
            desc=f"epoch {epoch}/{tcfg.epochs}" + (", known users' ids" if warm else ""),
            disable=not tcfg.progress,
            leave=False,
        )
        for raw_batch in bar:
            if warm is not None:
                values = warm.step(model, raw_batch, log_q, tcfg.embed_l2)
            else:
                batch = hooks.batch(cold(raw_batch, rng))
                values = _step(model, batch, cold.id_slot, tcfg, log_q, opt_rt, opt_zst)
                values.update(hooks.after_step(model, batch))
            history.batches.append(values)
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix({k: f"{v:.4f}" for k, v in values.items()})
        means = {k: v / max(n_batches, 1) for k, v in sums.items()}
        val = evaluate_part(model, batches, VAL, tcfg)
        record = {
            "epoch": epoch,
            **means,
            "val_auc": val["all"]["auc"],
            "val_auc_new": val["new"]["auc"],
        }
        score, ndcg = val["all"]["auc"], ""
        if tcfg.by_ndcg:
            ranked = rank_part(model, batches, VAL, groups=served)
            record.update(val_ndcg=ranked["all"]["ndcg@10"], val_ndcg_new=ranked["new"]["ndcg@10"])
            score = ranked["all"]["ndcg@10"]
            if served is not None:
                score = record["val_ndcg_served"] = ranked["served"]["ndcg@10"]
            ndcg = f"  val NDCG@10 {record['val_ndcg']:.4f} (new {record['val_ndcg_new']:.4f}" + (
                f", served {score:.4f})" if served is not None else ")"
            )
        if tcfg.freeze_cold:
            record["phase"] = 1 if warm is None else 2
        history.epochs.append(record)
        hooks.after_epoch(model, record)
        log.info(
            "epoch %d  L_rt %.4f  L_a %.4f  L_v %.4f  L_d %.4f  val AUC %.4f (new %.4f)%s",
            epoch,
            means["L_rt"],
            means["L_a"],
            means["L_v"],
            means["L_d"],
            val["all"]["auc"],
            val["new"]["auc"],
            ndcg,
        )
        cold_phase = tcfg.freeze_cold and warm is None
        tracked = record["val_ndcg_new"] if cold_phase else score
        if tcfg.keeps_cold_checkpoint and record["val_ndcg_new"] > new_best + 1e-5:
            new_best, history.cold_state = record["val_ndcg_new"], copy.deepcopy(model.state_dict())
            history.cold_epoch = epoch
        if tracked > best + 1e-5:
            best, best_state, stale = tracked, copy.deepcopy(model.state_dict()), 0
            history.best_epoch = epoch
            if cold_phase:
                history.cold_epoch, cold_score = epoch, score
        else:
            stale += 1
            if stale >= tcfg.patience:
                if not cold_phase:
                    break
                model.load_state_dict(best_state)  # new users peaked: their weights stay as they were
                warm = _KnownIds(model, data.schema, tcfg.lr)
                best, stale = cold_score, 0
                log.info(
                    "new users' weights kept from epoch %d; known users' ids train on", history.cold_epoch
                )
    if warm is not None:
        warm.release(model)
    if history.cold_epoch == history.best_epoch and not tcfg.freeze_cold:
        history.cold_state = None  # new users' best epoch is everyone's: one checkpoint serves all
    if cold_scale != 1.0 and history.cold_epoch >= 0:
        # new users' weights (everyone's, where their epochs coincide) with the learned logit scaled
        model.load_state_dict(history.cold_state if history.cold_state is not None else best_state)
        model.ranker.scale_learned(cold_scale)
        history.cold_state, history.cold_scale = copy.deepcopy(model.state_dict()), cold_scale
    if history.cold_state is not None:
        history.cold_clicks = tcfg.cold_clicks_resolved
    model.load_state_dict(best_state)
    model.eval()
    history.seconds = time.perf_counter() - started
    return model, history


def _step(
    model: MailModel,
    batch: tuple[Tensor, ...],
    id_slot: int,
    tcfg: TrainConfig,
    log_q: Tensor | None,
    opt_rt: torch.optim.Optimizer,
    opt_zst: torch.optim.Optimizer | None,
) -> dict[str, float]:
    """One co-training step on `batch` (both optimizers); the losses to log."""
    attrs, ctx, beh, item, label, is_new = batch
    l_rt, loss = _ranking_loss(model, batch, log_q, tcfg.embed_l2)
    # catalog task: a sampled negative repeats its positive's user and behavior, so the zero-shot
    # losses read the positives only (same expectation, 1 + negatives times fewer); never a cold
    # row's (a short history is not the behavior the attributes map to)
    keep = attrs[:, id_slot] != OOV
    zl = zst_step_losses(model, attrs, beh, is_new, keep & (label > 0) if tcfg.task == "catalog" else keep)
    if zl is not None:
        assert model.zst is not None
        loss = loss + zl.total(model.zst.cfg)
    opt_rt.zero_grad(set_to_none=True)
    if opt_zst is not None:
        opt_zst.zero_grad(set_to_none=True)
    loss.backward()
    opt_rt.step()
    if opt_zst is not None:
        opt_zst.step()
    values = {"L_rt": float(l_rt.detach())}
    if zl is not None:
        values.update(L_a=float(zl.l_a.detach()), L_v=float(zl.l_v.detach()), L_d=float(zl.l_d.detach()))
    return values


class _KnownIds:
    """`freeze_cold`'s phase 2: every parameter frozen but the user-id table, whose PAD and OOV
    rows (the OOV row is every new user's) never move; its own Adam. What a new user is served,
    id unknown, with or without clicks, stays exactly as at the phase's start."""

    def __init__(self, model: MailModel, schema: Schema, lr: float) -> None:
        table = model.emb.user[[f.name for f in schema.user_fields].index("user_id")]
        assert isinstance(table, torch.nn.Embedding)
        self.table: Tensor = table.weight
        for p in model.parameters():
            p.requires_grad_(p is self.table)
        self.opt = torch.optim.Adam([self.table], lr=lr)

    def step(
        self, model: MailModel, batch: tuple[Tensor, ...], log_q: Tensor | None, embed_l2: float
    ) -> dict[str, float]:
        l_rt, loss = _ranking_loss(model, batch, log_q, embed_l2)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad = self.table.grad
        assert grad is not None
        grad[: OOV + 1] = 0.0  # PAD and OOV
        self.opt.step()
        return {"L_rt": float(l_rt.detach())}

    @staticmethod
    def release(model: MailModel) -> None:
        for p in model.parameters():
            p.requires_grad_(True)


def _ranking_loss(
    model: MailModel, batch: tuple[Tensor, ...], log_q: Tensor | None, embed_l2: float
) -> tuple[Tensor, Tensor]:
    """L_rt of a training batch, and L_rt plus the L2 of the embeddings it looked up."""
    attrs, ctx, beh, item, label, _ = batch
    user = user_inputs(model, attrs, ctx, beh, training=True)
    l_rt = row_losses(model, user, item, label, log_q).mean()
    return l_rt, l_rt + embed_l2 * _embedding_l2(model, attrs, ctx, beh, item)


def sampling_log_probability(sampler: task.NegativeSampler | None) -> Tensor:
    """log q(item) over catalog rows (row 0 unused) of the sampler's draw: the sampled-softmax
    correction. Uniform: a constant (it cancels, kept for one code path). The rejection of a
    user's known items is ignored (a user knows a few % of the catalog)."""
    assert sampler is not None
    q = np.full(sampler.n_items, 1.0 / sampler.n_items) if sampler.p is None else sampler.p
    return torch.from_numpy(np.log(np.r_[1.0, q])).float()


def row_losses(
    model: MailModel, user: UserInputs, item: Tensor, label: Tensor, log_q: Tensor | None
) -> Tensor:
    """Each row's L_rt, (B,): binary cross-entropy of its logit (item (B,)), or, with `log_q`,
    sampled softmax: row b's positive item[b, 0] against its sampled item[b, 1:], every logit
    minus the log of its sampling probability (Bengio & Senecal; Yi et al., RecSys 2019)."""
    if log_q is None:
        return F.binary_cross_entropy_with_logits(model.ranker(user, item), label, reduction="none")
    rows, width = item.shape
    owner = torch.arange(rows).repeat_interleave(width)
    logits = model.ranker(user, item.reshape(-1), owner).view(rows, width) - log_q[item]
    return F.cross_entropy(logits, torch.zeros(rows, dtype=torch.long), reduction="none")


@dataclass(frozen=True)
class ColdRows:
    """Shows a `share` of a batch's rows as a new user looks (user id OOV, no behavior), and in
    those rows hides each other user attribute (`attributes`: their columns) with probability
    `attr_dropout` (PAD: missing). A `history` share of them keep their n most recent
    interactions, n uniform in 1..`max_history`: a new user after n clicks."""

    share: float
    id_slot: int
    attr_dropout: float = 0.0
    attributes: tuple[slice, ...] = ()
    history: float = 0.0
    max_history: int = 10

    @classmethod
    def for_schema(
        cls, schema: Schema, share: float, attr_dropout: float = 0.0, history: float = 0.0
    ) -> ColdRows:
        """Cold rows for `schema`'s user fields: the id's column, and every other field's."""
        others = (task.user_field_slots(schema, f.name) for f in schema.user_fields if f.name != "user_id")
        return cls(share, task.user_id_slot(schema), attr_dropout, tuple(others), history)

    def __call__(self, batch: tuple[Tensor, ...], rng: np.random.Generator) -> tuple[Tensor, ...]:
        if self.share <= 0:
            return batch
        attrs, ctx, beh, item, label, is_new = batch
        pick = rng.random(len(attrs)) < self.share
        if not pick.any():
            return batch
        attrs, original, beh = attrs.clone(), beh, beh.clone()
        task.as_new_user(attrs.numpy(), beh.numpy(), pick, self.id_slot)
        if self.history > 0:  # behavior is most recent first: keep its first n columns
            short = pick & (rng.random(len(attrs)) < self.history)
            n = rng.integers(1, self.max_history + 1, len(attrs))
            keep = torch.from_numpy(short[:, None] & (np.arange(beh.shape[1])[None, :] < n[:, None]))
            beh[keep] = original[keep]
        if self.attr_dropout > 0:
            for cols in self.attributes:
                hide = pick & (rng.random(len(attrs)) < self.attr_dropout)
                attrs[torch.from_numpy(hide), cols] = PAD
        return attrs, ctx, beh, item, label, is_new


def _embedding_l2(model: MailModel, attrs: Tensor, ctx: Tensor, beh: Tensor, item: Tensor) -> Tensor:
    """Mean squared norm of the embeddings this batch used (the usual sparse L2 of CTR models)."""
    a, _ = model.emb.user_fields(attrs)
    c, _ = model.emb.context_fields(ctx)
    t = model.emb.items(item)
    return a.pow(2).sum(-1).mean() + c.pow(2).sum(-1).mean() + t.pow(2).sum(-1).mean()
