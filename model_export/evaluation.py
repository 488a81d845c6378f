"""Evaluation of a trained model: the task's AUC, GAUC and log loss, whole-catalog ranking, the
R^2 diagnostics of virtual behavior, and the metrics.json report that gathers them."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from model_export import catalog as task
from model_export import metrics
from model_export.batches import Batches, user_inputs
from model_export.features import EncodedData
from model_export.model import MailModel
from model_export.protocol import TEST, TRAIN, VAL
from service.contract import OOV, PAD

if TYPE_CHECKING:  # train imports this module for its validation after each epoch
    from model_export.train import History, TrainConfig


@dataclass(frozen=True)
class Cold:
    """New users' own checkpoint (`TrainConfig.cold_checkpoint`) and whom it scores: a user with
    an unknown id and fewer than `clicks` items of history (`TrainConfig.cold_clicks`)."""

    model: MailModel
    clicks: int = 1


def predict(
    model: MailModel,
    batches: Batches,
    rows: npt.NDArray[np.int64],
    batch_size: int = 4096,
    items: npt.NDArray[np.int64] | None = None,
    cold: Cold | None = None,
) -> npt.NDArray[np.float64]:
    """Probabilities of `rows` (with `items`: those items); `cold` scores its users' rows."""
    model.eval()
    slot = _id_slot(batches, cold)
    out = []
    with torch.no_grad():
        for attrs, ctx, beh, item, _, _ in batches.iterate(rows, batch_size, items=items):
            logits = model.ranker(user_inputs(model, attrs, ctx, beh, training=False), item)
            if cold is not None:
                m = unseen(attrs, beh, slot, cold.clicks)
                if bool(m.any()):
                    user = user_inputs(cold.model, attrs[m], ctx[m], beh[m], training=False)
                    logits[m] = cold.model.ranker(user, item[m])
            out.append(torch.sigmoid(logits).double().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def unseen(attrs: Tensor, behavior: Tensor, id_slot: int, clicks: int = 1) -> Tensor:
    """Rows of a user the model has never seen, the rows a cold checkpoint scores: user id OOV and
    fewer than `clicks` items of history (1: a new user before any click). The service's rule on
    one encoded user: `Schema.is_unseen`."""
    return (attrs[:, id_slot] == OOV) & ((behavior != PAD).sum(1) < clicks)


def _id_slot(batches: Batches, cold: Cold | None) -> int:
    return task.user_id_slot(batches.data.schema) if cold is not None else -1


def cold_model(model: MailModel, history: History) -> Cold | None:
    """New users' own checkpoint (`TrainConfig.cold_checkpoint`) loaded into a copy of `model`,
    with the clicks up to which it scores them, or None."""
    if history.cold_state is None:
        return None
    return Cold(with_weights(model, history.cold_state), history.cold_clicks)


def with_weights(model: MailModel, state: dict[str, Tensor]) -> MailModel:
    """A copy of `model` with the weights `state`, in eval mode (`model` unchanged)."""
    other = copy.deepcopy(model)
    other.load_state_dict(state)
    return other.eval()


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


def evaluate_part(
    model: MailModel, batches: Batches, part: int, tcfg: TrainConfig, cold: Cold | None = None
) -> dict[str, Any]:
    """The task's AUC, GAUC and log loss by group on VAL or TEST (`cold`: scores its users' rows)."""
    data = batches.data
    ev = part_pairs(data, part, tcfg)
    scores = predict(model, batches, ev.rows, items=ev.items, cold=cold)
    return metrics.by_group(data.user[ev.rows], ev.labels, scores, data.is_new[ev.rows])


def tie_rank(data: EncodedData) -> npt.NDArray[np.int64]:
    """Rank of each catalog row's raw id (rows 1..I), the service's tie-break."""
    order = np.argsort(np.array(data.catalog.ids, dtype=object), kind="stable")
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank


def catalog_scorer(
    model: MailModel, batches: Batches, cases: task.RankingSet, cold: Cold | None = None
) -> task.CatalogScorer:
    """Scores of every catalog item for ranking cases, through the ranking tower (owner batching);
    `cold` scores the cases of unseen users (`unseen`)."""
    n_items = len(batches.data.catalog)
    all_items = torch.arange(1, n_items + 1)
    slot = _id_slot(batches, cold)

    def logits(m: MailModel, rows: Tensor) -> Tensor:
        attrs, ctx, beh = batches.attrs[rows], batches.context[rows], batches.behavior[rows]
        user = user_inputs(m, attrs, ctx, beh, training=False)
        owner = torch.arange(len(rows)).repeat_interleave(n_items)
        return m.ranker(user, all_items.repeat(len(rows)), owner).reshape(len(rows), n_items)

    def score(idx: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        rows = torch.from_numpy(cases.rows[idx])
        model.eval()
        with torch.no_grad():
            if cold is None:
                return logits(model, rows).double().numpy()
            m = unseen(batches.attrs[rows], batches.behavior[rows], slot, cold.clicks)
            out = torch.empty(len(rows), n_items)
            for part, scorer in ((m, cold.model), (~m, model)):
                if bool(part.any()):
                    out[part] = logits(scorer, rows[part])
        return out.double().numpy()

    return score


def rank_part(
    model: MailModel,
    batches: Batches,
    part: int,
    cases: task.RankingSet | None = None,
    cold: Cold | None = None,
    groups: Mapping[str, npt.NDArray[np.bool_]] | None = None,
) -> dict[str, Any]:
    """Whole-catalog ranking metrics by group for the part's cases (or the given ones); `cold`
    scores the cases of unseen users; `groups`: more groups, each a mask over the cases."""
    data = batches.data
    cases = cases if cases is not None else data.ranking[part]
    score = catalog_scorer(model, batches, cases, cold)
    return task.ranking_metrics(cases, score, len(data.catalog), tie_rank(data), groups)


def served_cases(batches: Batches, cases: task.RankingSet, clicks: int) -> npt.NDArray[np.bool_]:
    """Which ranking cases a main checkpoint scores beside a cold checkpoint that takes the unseen
    users' (`unseen` with `clicks`): an id in vocabulary, or at least `clicks` items of history."""
    rows = torch.from_numpy(cases.rows)
    slot = task.user_id_slot(batches.data.schema)
    return ~unseen(batches.attrs[rows], batches.behavior[rows], slot, clicks).numpy()


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
    cold = cold_model(model, history)
    report: dict[str, Any] = {
        "task": task_record(tcfg),
        "test": evaluate_part(model, batches, TEST, tcfg, cold),
        "val": evaluate_part(model, batches, VAL, tcfg, cold),
        "ranking": {
            "test": rank_part(model, batches, TEST, cold=cold),
            "val": rank_part(model, batches, VAL, cold=cold),
        },
        "train_seconds": round(history.seconds, 2),
        "best_epoch": history.best_epoch,
        "epochs": history.epochs,
    }
    if history.cold_epoch >= 0:  # freeze_cold, cold_checkpoint: new users are served this epoch's weights
        report["cold_epoch"] = history.cold_epoch
        report["cold_scale"] = history.cold_scale
        if cold is not None:
            report["cold_clicks"] = cold.clicks
    if cold is not None:  # the same run with one checkpoint for every user: the paired comparison
        report["one_checkpoint"] = {
            "ranking": {"test": rank_part(model, batches, TEST), "val": rank_part(model, batches, VAL)},
            "test": evaluate_part(model, batches, TEST, tcfg),
        }
    elif history.cold_epoch >= 0 and not tcfg.freeze_cold:  # new users' best epoch was everyone's
        report["one_checkpoint"] = {"ranking": report["ranking"], "test": report["test"]}
    rcfg = model.cfg.ranker
    if rcfg is not None and rcfg.item_prior:  # as resolved ("auto": chosen on validation)
        report["prior"] = {"segment": rcfg.prior_segment or "overall", "shrink": rcfg.prior_shrink}
        if rcfg.prior_answer:
            report["prior"] |= {"answer": rcfg.prior_answer, "answer_shrink": rcfg.prior_answer_shrink}
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
        "loss": tcfg.loss,
        "cold_rows": tcfg.cold_share,
        "attr_dropout": tcfg.attr_dropout,
        "cold_history": tcfg.cold_history,
        "select": tcfg.select,
        "freeze_cold": tcfg.freeze_cold,
        "cold_checkpoint": tcfg.keeps_cold_checkpoint,
    }
