"""Co-training of the ranking tower and the zero-shot tower, evaluation, and checkpoints.

Two optimizers step on every batch (the paper's G_A and G_B): one on L_rt for the embeddings and
the ranking tower, one on L_zst = L_a + L_v + L_d for the zero-shot tower only. Every edge between
the towers is cut (`detach`): the ZST reads embeddings and the ranker's behavior representation
but never updates them, and the ranker reads virtual behavior as an input.

Cold = empty behavior (the paper's flag, Eq. 9). With `fill_train` the virtual behavior takes its
place in training as at inference; otherwise only at inference (the official code).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor

from model_export import catalog as task
from model_export import metrics
from model_export.features import EncodedData
from model_export.model import MailModel, ModelConfig, UserInputs, ZstLosses
from model_export.protocol import TEST, TRAIN, VAL
from service.contract import PAD, Schema, blend_gate

log = logging.getLogger(__name__)

CHECKPOINT = "model.pt"
METRICS = "metrics.json"
LOSS_NAMES = ("L_rt", "L_a", "L_v", "L_d")


@dataclass
class TrainConfig:
    epochs: int = 12
    batch_size: int = 512
    lr: float = 1e-3  # G_B: embeddings + ranking tower
    lr_zst: float = 5e-4  # G_A: zero-shot tower (the official code's 0.5 x lr)
    weight_decay: float = 0.0
    embed_l2: float = 1e-5  # L2 on the embeddings looked up in a batch
    patience: int = 2  # epochs without a better validation score (`select`) before stopping
    # what early stopping keeps: "ndcg" (validation whole-catalog NDCG@10 of all users, the
    # catalog task's product metric) | "auc" (validation AUC); the rating task always uses AUC
    select: str = "ndcg"
    seed: int = 0
    threads: int = 2
    progress: bool = True
    # the task (model_export.catalog): "catalog" (rank the whole catalog; the product's) | "rating"
    task: str = "catalog"
    positives: str = "liked"  # catalog: "liked" (label 1) | "any" (every rated item)
    rated_negatives: bool = False  # catalog, liked: rated-but-not-liked rows train as negatives
    negatives: int = 4  # catalog: never-interacted items sampled per positive, afresh each epoch
    sampling: str = "uniform"  # catalog: "uniform" | "popularity" (training count^0.75)
    cold_rows: float | None = None  # share of rows shown as a new user; None: catalog 0.2, rating 0
    # in those rows, the chance each user attribute (user id aside) is hidden as a user who skipped
    # the question looks (PAD): a regularizer of the cold path, and robustness to missing answers
    attr_dropout: float = 0.0

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("task", self.task, task.TASKS),
            ("positives", self.positives, task.POSITIVES),
            ("sampling", self.sampling, task.SAMPLING),
            ("select", self.select, SELECT),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; choose from {allowed}")

    @property
    def cold_share(self) -> float:
        if self.cold_rows is not None:
            return self.cold_rows
        return CATALOG_COLD_ROWS if self.task == "catalog" else 0.0


CATALOG_COLD_ROWS = 0.2
SELECT = ("ndcg", "auc")


class TrainHooks:
    """Opt-in extensions of `train` for the baselines (`model_export.baselines`).

    The base class changes nothing: it builds the plain `MailModel`, passes every batch through
    untouched and adds no step. A subclass may build another model around the same ranking
    tower, transform training batches (DropoutNet) or run an extra update after each step
    (MetaEmb); the losses it returns are logged beside L_rt, L_a, L_v, L_d.
    """

    def build(self, cfg: ModelConfig, schema: Schema, catalog_features: Tensor) -> MailModel:
        return MailModel(cfg, schema, catalog_features)

    def batch(self, batch: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """A training batch (attrs, context, behavior, item, label, is_new) before the step."""
        return batch

    def after_step(self, model: MailModel, batch: tuple[Tensor, ...]) -> dict[str, float]:
        """Runs after both optimizers stepped on `batch`; returns losses to log."""
        return {}


@dataclass
class History:
    epochs: list[dict[str, float]] = field(default_factory=list)  # per epoch: mean losses + val
    batches: list[dict[str, float]] = field(default_factory=list)  # per batch losses (plots)
    best_epoch: int = -1
    seconds: float = 0.0


def _gates(model: MailModel, behavior: Tensor, training: bool) -> Tensor:
    """(B, 1) weight of the virtual behavior for each row, from its real history length."""
    cfg = model.cfg
    if model.zst is None or (training and not cfg.fill_train):
        return torch.zeros(behavior.shape[0], 1)
    counts = (behavior > 0).sum(1).tolist()
    mode = cfg.fill
    if training and mode == "off":
        mode = "hard"
    return torch.tensor([[blend_gate(n, mode, cfg.blend_tau)] for n in counts], dtype=torch.float32)


def user_inputs(
    model: MailModel, attrs: Tensor, context: Tensor, behavior: Tensor, training: bool
) -> UserInputs:
    """Ranker inputs for a batch, virtual behavior filled for cold rows."""
    gate = _gates(model, behavior, training)
    virtual = torch.zeros(attrs.shape[0], model.virtual_slots, model.emb.d)
    cold = gate[:, 0] > 0
    if model.zst is not None and bool(cold.any()):
        zst = model.zst
        emb, mask = model.zst_fields(attrs[cold])
        if zst.cfg.variant == "none":  # MAIL-None learns its linear map through L_rt alone
            virtual[cold] = zst.virtual_behavior(emb.detach(), mask)
        else:
            was_training = zst.training
            zst.eval()  # deterministic, as at inference
            with torch.no_grad():
                virtual[cold] = zst.virtual_behavior(emb, mask)
            zst.train(was_training)
    return UserInputs(attrs, context, behavior, virtual, gate)


class Batches:
    """Index batches over rows of the encoded data, as tensors."""

    def __init__(self, data: EncodedData, fill_new_users: bool) -> None:
        self.data = data
        self.attrs = torch.from_numpy(data.user_attrs[data.user])
        self.context = torch.from_numpy(data.context)
        self.behavior = torch.from_numpy(data.model_behavior(fill_new_users))
        self.item = torch.from_numpy(data.item)
        self.label = torch.from_numpy(data.label)
        self.is_new = torch.from_numpy(data.is_new)

    def iterate(
        self,
        rows: npt.NDArray[np.int64],
        batch_size: int,
        rng: np.random.Generator | None = None,
        items: npt.NDArray[np.int64] | None = None,
        labels: npt.NDArray[np.float32] | None = None,
    ) -> Iterator[tuple[Tensor, ...]]:
        """Batches of (attrs, context, behavior, item, label, is_new) for `rows`; with `items` and
        `labels` (aligned with `rows`), row i scores items[i] with label labels[i] instead."""
        perm = rng.permutation(len(rows)) if rng is not None else np.arange(len(rows))
        item = torch.from_numpy(items[perm]) if items is not None else None
        label = torch.from_numpy(labels[perm]) if labels is not None else None
        order = rows[perm]
        for start in range(0, len(order), batch_size):
            end = start + batch_size
            idx = torch.from_numpy(order[start:end])
            yield (
                self.attrs[idx],
                self.context[idx],
                self.behavior[idx],
                self.item[idx] if item is None else item[start:end],
                self.label[idx] if label is None else label[start:end],
                self.is_new[idx],
            )


def training_rows(
    data: EncodedData, tcfg: TrainConfig, sampler: task.NegativeSampler | None, rng: np.random.Generator
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """One epoch's (rows, items, labels): the rated rows (rating task), or positives with
    negatives drawn afresh (catalog task; `model_export.catalog`)."""
    train = data.rows(TRAIN)
    if tcfg.task == "rating":
        return train, data.item[train], data.label[train]
    assert sampler is not None
    liked = data.label[train] == 1
    pos = train if tcfg.positives == "any" else train[liked]
    rated_neg = train[~liked] if tcfg.positives == "liked" and tcfg.rated_negatives else train[:0]
    neg = np.repeat(pos, tcfg.negatives)
    neg_items = sampler.draw(data.user[neg], rng)
    rows = np.r_[pos, rated_neg, neg]
    items = np.r_[data.item[pos], data.item[rated_neg], neg_items]
    labels = np.r_[np.ones(len(pos)), np.zeros(len(rated_neg) + len(neg))].astype(np.float32)
    return rows.astype(np.int64), items.astype(np.int64), labels


def make_sampler(data: EncodedData, tcfg: TrainConfig) -> task.NegativeSampler | None:
    if tcfg.task != "catalog":
        return None
    weights = task.popularity_weights(data.item_counts) if tcfg.sampling == "popularity" else None
    return task.NegativeSampler(data.known_train, len(data.catalog), weights)


def zst_step_losses(
    model: MailModel, attrs: Tensor, behavior: Tensor, is_new: Tensor, keep: Tensor | None = None
) -> ZstLosses | None:
    """L_a, L_v, L_d on old users with real behavior (among `keep` rows); inputs and targets
    detached."""
    if model.zst is None or model.zst.cfg.variant == "none":
        return None
    rows = ~is_new & (behavior > 0).any(1)
    if keep is not None:
        rows &= keep
    if int(rows.sum()) < 2:
        return None
    with torch.no_grad():
        emb, mask = model.zst_fields(attrs[rows])
        target, target_mask = model.ranker.behavior_target(behavior[rows])
    return model.zst.losses(emb.detach(), mask, target.detach(), target_mask)


def predict(
    model: MailModel,
    batches: Batches,
    rows: npt.NDArray[np.int64],
    batch_size: int = 4096,
    items: npt.NDArray[np.int64] | None = None,
) -> npt.NDArray[np.float64]:
    model.eval()
    out = []
    with torch.no_grad():
        for attrs, ctx, beh, item, _, _ in batches.iterate(rows, batch_size, items=items):
            logits = model.ranker(user_inputs(model, attrs, ctx, beh, training=False), item)
            out.append(torch.sigmoid(logits).double().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def evaluate_rows(model: MailModel, batches: Batches, rows: npt.NDArray[np.int64]) -> dict[str, Any]:
    data = batches.data
    scores = predict(model, batches, rows)
    return metrics.by_group(data.user[rows], data.label[rows], scores, data.is_new[rows])


def part_pairs(data: EncodedData, part: int, tcfg: TrainConfig) -> task.EvalSet:
    """What the task's AUC scores on VAL or TEST: liked samples against their sampled negatives
    (catalog), or the rated samples with their labels (rating)."""
    if tcfg.task == "catalog":
        return data.sampled_eval[part]
    rows = data.rows(part)
    return task.EvalSet(rows, data.item[rows], data.label[rows])


def resolve_prior(data: EncodedData, cfg: ModelConfig) -> ModelConfig:
    """`cfg` with an "auto" prior segment chosen on validation (`popular.choose_segment` among
    single-slot attributes: the attribute, or "" for the overall list, and the shrinkage)."""
    rcfg = cfg.ranker
    if rcfg is None or not rcfg.item_prior or rcfg.prior_segment != "auto":
        return cfg
    from model_export.popular import choose_segment

    chosen, _ = choose_segment(data, single_slot=True)
    log.info("prior segment chosen on validation: %s, shrink %s", chosen.field or "overall", chosen.shrink)
    return replace(cfg, ranker=replace(rcfg, prior_segment=chosen.field or "", prior_shrink=chosen.shrink))


def evaluate_part(model: MailModel, batches: Batches, part: int, tcfg: TrainConfig) -> dict[str, Any]:
    """The task's AUC, GAUC and log loss by group on VAL or TEST."""
    data = batches.data
    ev = part_pairs(data, part, tcfg)
    scores = predict(model, batches, ev.rows, items=ev.items)
    return metrics.by_group(data.user[ev.rows], ev.labels, scores, data.is_new[ev.rows])


def tie_rank(data: EncodedData) -> npt.NDArray[np.int64]:
    """Rank of each catalog row's raw id (rows 1..I), the service's tie-break."""
    order = np.argsort(np.array(data.catalog.ids, dtype=object), kind="stable")
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank


def catalog_scorer(model: MailModel, batches: Batches, cases: task.RankingSet) -> task.CatalogScorer:
    """Scores of every catalog item for ranking cases, through the ranking tower (owner batching)."""
    n_items = len(batches.data.catalog)
    all_items = torch.arange(1, n_items + 1)

    def score(idx: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        rows = torch.from_numpy(cases.rows[idx])
        model.eval()
        with torch.no_grad():
            user = user_inputs(
                model, batches.attrs[rows], batches.context[rows], batches.behavior[rows], training=False
            )
            owner = torch.arange(len(idx)).repeat_interleave(n_items)
            logits = model.ranker(user, all_items.repeat(len(idx)), owner)
        return logits.reshape(len(idx), n_items).double().numpy()

    return score


def rank_part(
    model: MailModel, batches: Batches, part: int, cases: task.RankingSet | None = None
) -> dict[str, Any]:
    """Whole-catalog ranking metrics by group for the part's cases (or the given ones)."""
    data = batches.data
    cases = cases if cases is not None else data.ranking[part]
    score = catalog_scorer(model, batches, cases)
    return task.ranking_metrics(cases, score, len(data.catalog), tie_rank(data))


def train(
    data: EncodedData, cfg: ModelConfig, tcfg: TrainConfig, hooks: TrainHooks | None = None
) -> tuple[MailModel, History]:
    torch.manual_seed(tcfg.seed)
    torch.set_num_threads(tcfg.threads)
    rng = np.random.default_rng(tcfg.seed)
    hooks = hooks or TrainHooks()
    cfg = resolve_prior(data, cfg)
    model = hooks.build(cfg, data.schema, torch.from_numpy(data.catalog.features))
    if cfg.ranker is not None and cfg.ranker.item_prior:
        from model_export.popular import log_prior

        prior = log_prior(data, cfg.ranker.prior_segment, cfg.ranker.prior_shrink)
        model.ranker.set_item_prior(torch.from_numpy(prior).float())
    batches = Batches(data, fill_new_users=cfg.model == "oracle")
    opt_rt = torch.optim.Adam(model.ranker_parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    opt_zst = (
        torch.optim.Adam(model.zst.parameters(), lr=tcfg.lr_zst, weight_decay=tcfg.weight_decay)
        if model.zst is not None and any(True for _ in model.zst.parameters())
        else None  # a parameter-free generator (mean-fill) has nothing to step
    )
    sampler = make_sampler(data, tcfg)
    cold = ColdRows(tcfg.cold_share, task.user_id_slot(data.schema), tcfg.attr_dropout, data.schema)
    history = History()
    best, best_state, stale = -math.inf, copy.deepcopy(model.state_dict()), 0
    by_ndcg = tcfg.task == "catalog" and tcfg.select == "ndcg"
    started = time.perf_counter()
    from tqdm import tqdm

    for epoch in range(1, tcfg.epochs + 1):
        model.train()
        sums = dict.fromkeys(LOSS_NAMES, 0.0)
        rows, items, labels = training_rows(data, tcfg, sampler, rng)
        n_batches = math.ceil(len(rows) / tcfg.batch_size)
        bar = tqdm(
            batches.iterate(rows, tcfg.batch_size, rng, items, labels),
            total=n_batches,
            desc=f"epoch {epoch}/{tcfg.epochs}",
            disable=not tcfg.progress,
            leave=False,
        )
        for raw_batch in bar:
            batch = hooks.batch(cold(raw_batch, rng))
            attrs, ctx, beh, item, label, is_new = batch
            user = user_inputs(model, attrs, ctx, beh, training=True)
            l_rt = F.binary_cross_entropy_with_logits(model.ranker(user, item), label)
            loss = l_rt + tcfg.embed_l2 * _embedding_l2(model, attrs, ctx, beh, item)
            # catalog task: a sampled negative repeats its positive's user and behavior, so the
            # zero-shot losses read the positives only (same expectation, 1 + negatives times fewer)
            zl = zst_step_losses(model, attrs, beh, is_new, label > 0 if tcfg.task == "catalog" else None)
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
                values.update(
                    L_a=float(zl.l_a.detach()),
                    L_v=float(zl.l_v.detach()),
                    L_d=float(zl.l_d.detach()),
                )
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
        score = val["all"]["auc"]
        if by_ndcg:
            ranked = rank_part(model, batches, VAL)
            record.update(val_ndcg=ranked["all"]["ndcg@10"], val_ndcg_new=ranked["new"]["ndcg@10"])
            score = ranked["all"]["ndcg@10"]
        history.epochs.append(record)
        log.info(
            "epoch %d  L_rt %.4f  L_a %.4f  L_v %.4f  L_d %.4f  val AUC %.4f (new %.4f)%s",
            epoch,
            means["L_rt"],
            means["L_a"],
            means["L_v"],
            means["L_d"],
            val["all"]["auc"],
            val["new"]["auc"],
            f"  val NDCG@10 {record['val_ndcg']:.4f} (new {record['val_ndcg_new']:.4f})" if by_ndcg else "",
        )
        if score > best + 1e-5:
            best, best_state, stale = score, copy.deepcopy(model.state_dict()), 0
            history.best_epoch = epoch
        else:
            stale += 1
            if stale >= tcfg.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    history.seconds = time.perf_counter() - started
    return model, history


@dataclass(frozen=True)
class ColdRows:
    """Shows a `share` of a batch's rows as a new user looks (user id OOV, no behavior), and in
    those rows hides each other user attribute with probability `attr_dropout` (PAD: missing)."""

    share: float
    id_slot: int
    attr_dropout: float = 0.0
    schema: Schema | None = None

    def __call__(self, batch: tuple[Tensor, ...], rng: np.random.Generator) -> tuple[Tensor, ...]:
        if self.share <= 0:
            return batch
        attrs, ctx, beh, item, label, is_new = batch
        pick = rng.random(len(attrs)) < self.share
        if not pick.any():
            return batch
        attrs, beh = attrs.clone(), beh.clone()
        task.as_new_user(attrs.numpy(), beh.numpy(), pick, self.id_slot)
        if self.attr_dropout > 0 and self.schema is not None:
            for f in self.schema.user_fields:
                if f.name != "user_id":
                    hide = pick & (rng.random(len(attrs)) < self.attr_dropout)
                    attrs[torch.from_numpy(hide), task.user_field_slots(self.schema, f.name)] = PAD
        return attrs, ctx, beh, item, label, is_new


def _embedding_l2(model: MailModel, attrs: Tensor, ctx: Tensor, beh: Tensor, item: Tensor) -> Tensor:
    """Mean squared norm of the embeddings this batch used (the usual sparse L2 of CTR models)."""
    a, _ = model.emb.user_fields(attrs)
    c, _ = model.emb.context_fields(ctx)
    t = model.emb.items(item)
    return a.pow(2).sum(-1).mean() + c.pow(2).sum(-1).mean() + t.pow(2).sum(-1).mean()


def behavior_targets(
    model: MailModel, data: EncodedData, rows: npt.NDArray[np.int64], chunk: int = 4096
) -> tuple[Tensor, Tensor]:
    """The ranker's representation of the real behavior of `rows` (never fed to a new user's row),
    as the zero-shot tower learns it: (n, K, d) vectors and their (n, K) mask, in chunks."""
    targets, masks = [torch.zeros(0, model.virtual_slots, model.emb.d)], [torch.zeros(0, model.virtual_slots)]
    with torch.no_grad():
        for start in range(0, len(rows), chunk):
            t, m = model.ranker.behavior_target(torch.from_numpy(data.behavior[rows[start : start + chunk]]))
            targets.append(t)
            masks.append(m)
    return torch.cat(targets), torch.cat(masks).bool()


def virtual_r2(model: MailModel, batches: Batches, rows: npt.NDArray[np.int64], mean: Tensor) -> float:
    """R^2 of virtual against real behavior (the ranker's representation) over valid slots.

    The baseline is `mean`, old users' mean training behavior: R^2 > 0 means the zero-shot tower
    predicts a user's behavior better than filling in the average user's.
    """
    if model.zst is None or len(rows) == 0:
        return float("nan")
    model.eval()
    target, mask = behavior_targets(model, batches.data, rows)
    with torch.no_grad():
        virtual = model.virtual_behavior(batches.attrs[torch.from_numpy(rows)])
    m = mask[..., None].double()
    sse = float(((virtual - target).double().pow(2) * m).sum())
    sst = float(((mean - target).double().pow(2) * m).sum())
    return 1.0 - sse / sst if sst > 0 else float("nan")


def probe_r2(
    model: MailModel,
    batches: Batches,
    train_rows: npt.NDArray[np.int64],
    rows: npt.NDArray[np.int64],
    mean: Tensor,
    ridge: float = 100.0,
) -> float:
    """R^2 on `rows` of a ridge regression from the attributes the zero-shot tower reads (one-hot)
    to the ranker's behavior representation, fitted on old users' training rows: how much of a
    user's behavior a linear map of the attributes can tell, whatever the tower. Same baseline as
    `virtual_r2` (old users' mean behavior)."""
    data = batches.data
    keep = model.zst_keep[0].numpy().astype(bool)
    attrs = data.user_attrs[:, keep]
    widths = attrs.max(0) + 1
    offsets = np.r_[0, np.cumsum(widths)[:-1]]

    def design(users: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        x = np.zeros((len(users), int(widths.sum())))
        ids = attrs[users]
        for j in range(ids.shape[1]):
            x[np.arange(len(users)), offsets[j] + ids[:, j]] = ids[:, j] > 0  # PAD is no feature
        return x

    def target(r: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
        t, m = behavior_targets(model, data, r)
        return t.reshape(len(r), -1).double().numpy(), m.numpy()

    fit = train_rows[~data.is_new[train_rows] & (data.behavior[train_rows] > 0).any(1)]
    if len(fit) == 0 or len(rows) == 0:
        return float("nan")
    base = mean.reshape(-1).double().numpy()
    y, m = target(fit)
    full = m.all(1)  # rows whose every behavior slot is real
    users, inverse, counts = np.unique(data.user[fit[full]], return_inverse=True, return_counts=True)
    sums = np.zeros((len(users), len(base)))
    np.add.at(sums, inverse, y[full] - base)  # the rows of a user share their design row
    x = design(users)
    w = np.linalg.solve(x.T @ (x * counts[:, None]) + ridge * np.eye(x.shape[1]), x.T @ sums)
    y_new, mask = target(rows)
    d = mean.shape[-1]
    err = ((design(data.user[rows]) @ w + base - y_new) ** 2).reshape(len(rows), -1, d).sum(-1)
    tot = ((base - y_new) ** 2).reshape(len(rows), -1, d).sum(-1)
    sst = float(tot[mask].sum())
    return 1.0 - float(err[mask].sum()) / sst if sst > 0 else float("nan")


def mean_behavior(model: MailModel, batches: Batches, rows: npt.NDArray[np.int64]) -> Tensor:
    """Old users' mean behavior representation over training rows: (K, d)."""
    data = batches.data
    target, mask = behavior_targets(model, data, rows[~data.is_new[rows]])
    total = (target * mask[..., None]).sum(0)
    return total / mask.sum(0)[:, None].clamp(min=1)


def full_report(model: MailModel, data: EncodedData, history: History, tcfg: TrainConfig) -> dict[str, Any]:
    """metrics.json: the task's test metrics by user group (AUC on the catalog task's sampled
    negatives, or on rated rows), whole-catalog ranking, validation, diagnostics and losses."""
    batches = Batches(data, fill_new_users=model.cfg.model == "oracle")
    test_rows, train_rows = data.rows(TEST), data.rows(TRAIN)
    report: dict[str, Any] = {
        "task": task_record(tcfg),
        "test": evaluate_part(model, batches, TEST, tcfg),
        "val": evaluate_part(model, batches, VAL, tcfg),
        "ranking": {"test": rank_part(model, batches, TEST), "val": rank_part(model, batches, VAL)},
        "train_seconds": round(history.seconds, 2),
        "best_epoch": history.best_epoch,
        "epochs": history.epochs,
    }
    rcfg = model.cfg.ranker
    if rcfg is not None and rcfg.item_prior:  # as resolved ("auto": chosen on validation)
        report["prior"] = {"segment": rcfg.prior_segment or "overall", "shrink": rcfg.prior_shrink}
    if model.zst is not None:
        mean = mean_behavior(model, batches, train_rows)
        new_test = test_rows[data.is_new[test_rows]]
        old_test = test_rows[~data.is_new[test_rows]]
        report["diagnostics"] = {
            "virtual_r2_new": virtual_r2(model, batches, new_test, mean),
            "virtual_r2_old": virtual_r2(model, batches, old_test, mean),
            "probe_r2_new": probe_r2(model, batches, train_rows, new_test, mean),
            "note": "R^2 of virtual vs real behavior on test rows; 0 = no better than the mean "
            "behavior of old users (what mean-fill would give); probe: a ridge regression from the "
            "same attributes, fitted on old users' training rows (what a linear map can tell)",
        }
    return report


def task_record(tcfg: TrainConfig) -> dict[str, Any]:
    """The task as trained, for metrics.json and the split record."""
    if tcfg.task == "rating":
        return {"task": "rating", "cold_rows": tcfg.cold_share}
    return {
        "task": "catalog",
        "positives": tcfg.positives,
        "rated_negatives": tcfg.rated_negatives,
        "negatives": tcfg.negatives,
        "sampling": tcfg.sampling,
        "cold_rows": tcfg.cold_share,
        "attr_dropout": tcfg.attr_dropout,
        "select": tcfg.select,
    }


def save_run(
    out: Path,
    model: MailModel,
    data: EncodedData,
    tcfg: TrainConfig,
    report: dict[str, Any],
    split_record: dict[str, Any],
    run_info: dict[str, Any],
) -> None:
    """RUN_DIR: model.pt (rebuildable from itself alone), split.json, metrics.json, config.json."""
    out.mkdir(parents=True, exist_ok=True)
    parity_rows = _parity_rows(data)
    torch.save(
        {
            "config": model.cfg.to_dict(),
            "train_config": asdict(tcfg),
            "schema": data.schema.to_dict(),
            "catalog": {
                "ids": data.catalog.ids,
                "titles": data.catalog.titles,
                "features": data.catalog.features,
                "popularity": data.item_counts[1:],
            },
            "state_dict": model.state_dict(),
            "run": run_info,
            "parity": {
                "user_attrs": data.user_attrs[data.user[parity_rows]],
                "context": data.context[parity_rows],
                "behavior": data.model_behavior(model.cfg.model == "oracle")[parity_rows],
                "item": data.item[parity_rows],
            },
            "metrics": report["test"],
        },
        out / CHECKPOINT,
    )
    (out / "split.json").write_text(json.dumps(split_record))
    (out / METRICS).write_text(json.dumps(_finite(report), indent=2))
    (out / "config.json").write_text(
        json.dumps({"model": model.cfg.to_dict(), "train": asdict(tcfg), "run": run_info}, indent=2)
    )


def _parity_rows(data: EncodedData, n: int = 64) -> npt.NDArray[np.int64]:
    """Real test rows for export's parity check: cold and warm users both."""
    test = data.rows(TEST)
    cold = test[(data.behavior[test] > 0).sum(1) == 0]
    cold = np.r_[cold, test[data.is_new[test]]]
    warm = test[~data.is_new[test]]
    return np.unique(np.r_[cold[: n // 2], warm[: n // 2]]).astype(np.int64)


def _finite(obj: Any) -> Any:
    """JSON has no NaN: write undefined metrics as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def load_checkpoint(run_dir: Path) -> tuple[MailModel, dict[str, Any]]:
    """Rebuild the model from its checkpoint alone (config, schema, catalog, weights)."""
    from service.contract import Schema

    ckpt = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=False)
    schema = Schema.from_dict(ckpt["schema"])
    model = MailModel(
        ModelConfig.from_dict(ckpt["config"]), schema, torch.as_tensor(ckpt["catalog"]["features"])
    )
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, ckpt
