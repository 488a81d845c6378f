"""From raw interactions and a split to the integer arrays the towers train on.

Vocabularies are fitted on training rows only (each user or item counted once), so an unseen value
is OOV exactly as it will be online. Every id goes through `service.contract` (`Schema`,
`Catalog`, `behavior_rows`): the same code encodes live requests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from model_export.catalog import EvalSet, NegativeSampler, RankingSet, eval_set, keys
from model_export.data import FieldPlan, Interactions
from model_export.protocol import (
    TEST,
    TRAIN,
    UNUSED,
    VAL,
    Split,
    behavior_mask,
    behavior_windows,
    chronological_order,
    user_runs,
)
from service.contract import Catalog, FieldSpec, IntArray, Schema, build_vocab


@dataclass
class EncodedData:
    """One row per sample interaction (behavior-only rows are folded into `behavior`)."""

    schema: Schema
    catalog: Catalog
    user_ids: list[str]  # raw id of each user row
    user_attrs: IntArray  # (U, A)
    user: IntArray  # (n,) row into user_attrs
    item: IntArray  # (n,) catalog row of the target
    context: IntArray  # (n, C)
    behavior: IntArray  # (n, L) real behavior: catalog rows, most recent first
    label: npt.NDArray[np.float32]  # (n,)
    part: npt.NDArray[np.int8]  # (n,) TRAIN / VAL / TEST
    is_new: npt.NDArray[np.bool_]  # (n,)
    source: npt.NDArray[np.int64]  # (n,) index of the interaction in the raw data
    # the catalog task (model_export.catalog), for VAL and TEST: whole-catalog ranking cases and
    # the fixed sampled-negative evaluation sets; keys (user row, catalog row) of what training
    # knows each user interacted with (negatives are never drawn from them); liked training
    # interactions per catalog row (popularity)
    ranking: dict[int, RankingSet]
    sampled_eval: dict[int, EvalSet]
    known_train: npt.NDArray[np.int64]
    item_counts: IntArray  # (I + 1,)

    def __len__(self) -> int:
        return len(self.label)

    def rows(self, part: int) -> npt.NDArray[np.int64]:
        return np.flatnonzero(self.part == part)

    def model_behavior(self, fill_new_users: bool) -> IntArray:
        """Behavior as the model sees it: deleted (all PAD) for new users unless the oracle."""
        if fill_new_users:
            return self.behavior
        out = self.behavior.copy()
        out[self.is_new] = 0
        return out


def fit_field(field_plan: FieldPlan, values: Sequence[object]) -> FieldSpec:
    spec = field_plan.spec
    tokens = [t for v in values if v is not None for t in dict.fromkeys(spec.tokens(v))]
    return FieldSpec(
        spec.name,
        spec.source,
        spec.transform,
        spec.slots,
        build_vocab(tokens, field_plan.min_count),
    )


def fit_schema(
    data: Interactions, split: Split, behavior_len: int, virtual_slots: int, d_embed: int
) -> Schema:
    train = split.part == TRAIN
    users = sorted(set(data.user[train].tolist()))
    items = sorted(set(data.item[train].tolist()))
    ts = data.timestamp[train] if data.timestamp is not None else []
    user_raw = [{"user_id": u, **data.users.get(u, {})} for u in users]
    item_raw = [{"item_id": i, **data.items.get(i, {})} for i in items]
    return Schema(
        user_fields=tuple(fit_field(p, [r.get(p.spec.source) for r in user_raw]) for p in data.user_plan),
        item_fields=tuple(fit_field(p, [r.get(p.spec.source) for r in item_raw]) for p in data.item_plan),
        context_fields=tuple(
            fit_field(p, [int(t) for t in ts] if p.spec.source == "timestamp" else [])
            for p in data.context_plan
        ),
        behavior_len=behavior_len,
        virtual_slots=virtual_slots,
        d_embed=d_embed,
    )


def behavior_matrix(
    data: Interactions,
    catalog: Catalog,
    samples: npt.NDArray[np.int64],
    length: int,
    seed: int,
    clicks_only: bool = False,
) -> IntArray:
    """For each sample, the user's most recent items strictly before its time (most recent first):
    `protocol.behavior_windows` over the interactions `protocol.behavior_mask` allows; without
    time, in a seeded order (`protocol.chronological_order`)."""
    order = chronological_order(data, seed)
    order = order[behavior_mask(data, clicks_only)[order]]
    rows = catalog.rows(data.item[order].tolist())
    ts = data.timestamp
    start, stop = behavior_windows(
        data.user[order],
        None if ts is None else ts[order],
        data.user[samples],
        None if ts is None else ts[samples],
    )
    pos = stop[:, None] - 1 - np.arange(length)[None, :]  # (n, L) most recent first
    valid = pos >= start[:, None]
    out = np.where(valid, rows[np.clip(pos, 0, max(len(rows) - 1, 0))], 0)
    return out.astype(np.int64)


def encode_data(
    data: Interactions,
    split: Split,
    behavior_len: int = 32,
    virtual_slots: int = 1,
    d_embed: int = 32,
    clicks_only: bool = False,
) -> EncodedData:
    schema = fit_schema(data, split, behavior_len, virtual_slots, d_embed)
    catalog = Catalog.build(schema, data.items, data.titles)
    samples = np.flatnonzero(np.isin(split.part, (TRAIN, VAL, TEST)))
    user_ids = sorted(set(data.user[samples].tolist()))
    user_row = {u: r for r, u in enumerate(user_ids)}
    user_attrs = np.stack([schema.encode_user({"user_id": u, **data.users.get(u, {})}) for u in user_ids])
    if data.timestamp is not None:
        context = np.stack([schema.encode_context({"timestamp": int(t)}) for t in data.timestamp[samples]])
    else:
        context = np.tile(schema.encode_context({}), (len(samples), 1))
    user = np.array([user_row[u] for u in data.user[samples]], np.int64)
    item = catalog.rows(data.item[samples].tolist())
    label = data.label[samples].astype(np.float32)
    part = split.part[samples]
    is_new = np.isin(data.user[samples], list(split.new_users))
    # every interaction of a sample user: user row, catalog row, part (behavior-only: UNUSED)
    mine = np.flatnonzero(np.isin(data.user, user_ids))
    everyone = Interacted(
        user=np.array([user_row[u] for u in data.user[mine]], np.int64),
        item=catalog.rows(data.item[mine].tolist()),
        part=split.part[mine],
        liked=data.label[mine] == 1,
        sample=data.is_sample[mine],
        new=np.isin(data.user[mine], list(split.new_users)),
    )
    n_items = len(catalog)
    in_train = (everyone.part == TRAIN) | ~everyone.sample
    known_train = keys(everyone.user[in_train], everyone.item[in_train], n_items)
    ever = NegativeSampler(keys(everyone.user, everyone.item, n_items), n_items)
    ts = data.timestamp[samples] if data.timestamp is not None else np.zeros(len(samples), np.int64)
    ranking, sampled = {}, {}
    for held in (VAL, TEST):
        ranking[held] = ranking_cases(user, part, ts, is_new, held, everyone)
        liked = np.flatnonzero((part == held) & (label == 1))
        sampled[held] = eval_set(liked, user, item, ever, split.config.seed * 10 + held)
    counts = np.bincount(item[(part == TRAIN) & (label == 1)], minlength=n_items + 1).astype(np.int64)
    return EncodedData(
        schema=schema,
        catalog=catalog,
        user_ids=user_ids,
        user_attrs=user_attrs,
        user=user,
        item=item,
        context=context.astype(np.int64),
        behavior=behavior_matrix(data, catalog, samples, behavior_len, split.config.seed, clicks_only),
        label=label,
        part=part,
        is_new=is_new,
        source=samples.astype(np.int64),
        ranking=ranking,
        sampled_eval=sampled,
        known_train=known_train,
        item_counts=counts,
    )


@dataclass(frozen=True)
class Interacted:
    """Every interaction of the sample users (behavior-only ones too), aligned arrays."""

    user: IntArray  # user row
    item: IntArray  # catalog row
    part: npt.NDArray[np.int8]  # TRAIN / VAL / TEST, UNUSED (behavior-only, or a strict new user's)
    liked: npt.NDArray[np.bool_]
    sample: npt.NDArray[np.bool_]
    new: npt.NDArray[np.bool_]


def ranking_cases(
    user: IntArray,
    part: npt.NDArray[np.int8],
    ts: npt.NDArray[np.int64],
    is_new: npt.NDArray[np.bool_],
    held: int,
    everyone: Interacted,
) -> RankingSet:
    """One whole-catalog case per user with liked held-out items, scored at their first `held` row.

    Positives: liked items of the `held` part, and a strict new user's samples that training never
    saw (UNUSED; such a user is held in one part only, VAL or TEST). Not ranked: items of parts
    before `held` (TRAIN, and VAL for TEST), and an old user's behavior-only items.
    """
    e = everyone
    truth = e.sample & e.liked & ((e.part == held) | (e.part == UNUSED))
    known = (e.part == TRAIN) | (e.part == VAL) if held == TEST else e.part == TRAIN
    known = (known & e.sample) | (~e.sample & ~e.new)
    n_users = int(max(user.max(initial=0), e.user.max(initial=0))) + 1
    positives = _by_user(e.user[truth], e.item[truth], n_users)
    exclude = _by_user(e.user[known], e.item[known], n_users)
    rows = np.flatnonzero(part == held)
    rows = rows[np.lexsort((rows, ts[rows], user[rows]))]  # by user, then time, then row
    firsts = rows[user_runs(user[rows])[0]] if len(rows) else rows
    reps = [r for r in firsts.tolist() if len(positives[user[r]])]
    return RankingSet(
        rows=np.array(reps, np.int64),
        positives=[positives[user[r]] for r in reps],
        exclude=[np.setdiff1d(exclude[user[r]], positives[user[r]]) for r in reps],
        is_new=is_new[reps] if reps else np.zeros(0, bool),
    )


def _by_user(user: IntArray, item: IntArray, n_users: int) -> list[IntArray]:
    """Sorted unique items of each user row."""
    order = np.lexsort((item, user))
    user, item = user[order], item[order]
    bounds = np.searchsorted(user, np.arange(n_users + 1))
    return [np.unique(item[bounds[u] : bounds[u + 1]]) for u in range(n_users)]


__all__ = ["TEST", "TRAIN", "VAL", "EncodedData", "encode_data", "fit_schema", "behavior_matrix"]
