"""Evaluation protocols: which users are new, which interactions train, validate and test, and
which earlier interactions are a user's behavior at a moment.

* `mail` (the paper's): per user, the last 20% of their samples (in time) are test and a
  validation slice is cut from the end of the rest. A seeded 40% of users are new: their behavior
  is deleted from every sample (train and test); their samples stay in training.
* `strict` (beyond the paper): the same split, but new users never appear in training at all:
  their training samples are dropped and their user id is out of vocabulary at test. A seeded
  `val_new_share` of the new users validate instead of testing, and look exactly as test new users
  do: their last `test_fraction` of samples is VAL, the rest unused (never trained on, liked ones
  still count as the user's positives), so early stopping and every choice made on validation see
  the case the test measures, a new user's whole first page. The other new users test: their last
  samples are TEST, the rest unused.
* `days` (the paper's on Alimama): a global time split, the last day is test and the days before
  train, the last `val_fraction` of training samples in time validate; new users as in `mail`.

The split is deterministic under its seed, and `split_record()` writes it with raw ids so anyone
can rebuild and check it without this code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from model_export.data import Interactions, plan

PROTOCOLS = ("mail", "strict", "days")
DAY_SECONDS = 86_400
DAY_OFFSET = 8 * 3600  # Alimama's days are Beijing days (UTC+8)
TRAIN, VAL, TEST, UNUSED = 0, 1, 2, -1


@dataclass(frozen=True)
class SplitConfig:
    protocol: str = "mail"
    seed: int = 0
    new_fraction: float = 0.4
    test_fraction: float = 0.2
    val_fraction: float = 0.1  # of each user's non-test samples, from their end
    val_new_share: float = 0.25  # strict: share of the new users who validate (the rest test)


@dataclass
class Split:
    config: SplitConfig
    new_users: frozenset[str]
    part: npt.NDArray[np.int8]  # per interaction: TRAIN, VAL, TEST or UNUSED (behavior-only rows)
    val_new_users: frozenset[str] = frozenset()  # strict: the new users who validate, not test

    def mask(self, part: int) -> npt.NDArray[np.bool_]:
        return self.part == part


def chronological_order(data: Interactions, seed: int) -> npt.NDArray[np.int64]:
    """Interaction indices sorted by (user, time, item); without time, a seeded shuffle per user."""
    if data.timestamp is not None:
        return np.lexsort((data.item, data.timestamp, data.user)).astype(np.int64)
    noise = np.random.default_rng(seed).random(len(data))
    return np.lexsort((noise, data.user)).astype(np.int64)


def user_runs(users: npt.NDArray[Any]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Where each user's rows start and end in `users` grouped by user (as `chronological_order`
    leaves them): user i holds rows starts[i]:ends[i]."""
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    return starts, np.r_[starts[1:], len(users)].astype(np.int64)


def behavior_mask(data: Interactions, clicks_only: bool) -> npt.NDArray[np.bool_]:
    """Which interactions may be a user's behavior: every one; with `clicks_only`, the behavior-only
    ones and the samples that were clicks (what the service knows of a user, whose history grows by
    their clicks). Without time, the behavior-only ones alone (a user's implicit history): never a
    sample, so a label cannot leak through it."""
    if data.timestamp is None:
        return ~data.is_sample
    if clicks_only:
        return ~data.is_sample | (data.label == 1)
    return np.ones(len(data), bool)


def behavior_windows(
    users: npt.NDArray[Any],
    times: npt.NDArray[np.int64] | None,
    at_users: npt.NDArray[Any],
    at_times: npt.NDArray[np.int64] | None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The behavior of user at_users[i] at time at_times[i]: rows start[i]:stop[i] of `users`
    (grouped by user, each user's rows oldest first, at `times`), the user's rows strictly before
    that time; every row of the user without time; none for a user without rows."""
    start = np.zeros(len(at_users), np.int64)
    stop = np.zeros(len(at_users), np.int64)
    if len(users) == 0:
        return start, stop
    starts, ends = user_runs(users)
    slot = np.searchsorted(users[starts], at_users).clip(max=len(starts) - 1)
    known = users[starts][slot] == at_users
    start[known] = starts[slot[known]]
    if times is None or at_times is None:
        stop[known] = ends[slot[known]]
        return start, stop
    code = np.repeat(np.arange(len(starts), dtype=np.int64), ends - starts)
    key = code << 34 | times  # sorted: (user, time)
    probe = slot[known].astype(np.int64) << 34 | at_times[known]
    stop[known] = np.searchsorted(key, probe, side="left")
    return start, stop


def make_split(data: Interactions, config: SplitConfig) -> Split:
    if config.protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {config.protocol!r}; choose from {PROTOCOLS}")
    rng = np.random.default_rng(config.seed)
    sample_users = np.unique(data.user[data.is_sample])
    n_new = int(round(config.new_fraction * len(sample_users)))
    new_users = frozenset(rng.permutation(sample_users)[:n_new].tolist())
    if config.protocol == "days":
        return Split(config, new_users, day_parts(data, config))

    val_new: frozenset[str] = frozenset()
    if config.protocol == "strict":
        n_val_new = int(round(config.val_new_share * len(new_users)))
        pick = np.random.default_rng([config.seed, 1]).permutation(sorted(new_users))[:n_val_new]
        val_new = frozenset(pick.tolist())
    part = np.full(len(data), UNUSED, np.int8)
    order = chronological_order(data, config.seed)
    order = order[data.is_sample[order]]
    users = data.user[order]
    for start, end in zip(*user_runs(users), strict=True):
        n = end - start
        n_test = max(1, int(round(config.test_fraction * n)))
        n_val = max(1, int(round(config.val_fraction * (n - n_test)))) if n - n_test > 1 else 0
        idx = order[start:end]
        part[idx[: n - n_test - n_val]] = TRAIN
        part[idx[n - n_test - n_val : n - n_test]] = VAL
        part[idx[n - n_test :]] = TEST
        if config.protocol == "strict" and users[start] in new_users:
            part[idx[: n - n_test]] = UNUSED
            part[idx[n - n_test :]] = VAL if users[start] in val_new else TEST
    return Split(config, new_users, part, val_new)


def day_parts(data: Interactions, config: SplitConfig, train_days: int = 7) -> npt.NDArray[np.int8]:
    """The `days` protocol: the last day of samples is TEST, the `train_days` before it TRAIN,
    and the last `val_fraction` of those (in time) VAL; behavior-only rows stay UNUSED."""
    if data.timestamp is None:
        raise ValueError(f"{data.name} has no time for a day split")
    part = np.full(len(data), UNUSED, np.int8)
    samples = np.flatnonzero(data.is_sample)
    day = (data.timestamp[samples] + DAY_OFFSET) // DAY_SECONDS
    last = day.max()
    part[samples[day == last]] = TEST
    train = samples[(day < last) & (day >= last - train_days)]
    train = train[np.lexsort((train, data.timestamp[train]))]  # by time, ties by index
    n_val = int(round(config.val_fraction * len(train)))
    part[train[: len(train) - n_val]] = TRAIN
    part[train[len(train) - n_val :]] = VAL
    return part


def split_record(data: Interactions, split: Split) -> dict[str, Any]:
    """The split with raw ids: new users and every test sample (user, item, label, timestamp)."""
    test = np.flatnonzero(split.part == TEST)
    ts = data.timestamp
    record: dict[str, Any] = {
        "dataset": data.name,
        "protocol": split.config.protocol,
        "seed": split.config.seed,
        "new_fraction": split.config.new_fraction,
        "test_fraction": split.config.test_fraction,
        "val_fraction": split.config.val_fraction,
        "label": data.notes.get("label"),
        "new_users": sorted(split.new_users, key=_natural),
        # strict: new users who validate (their samples are never tested; a subset of new_users)
        "validation_new_users": sorted(split.val_new_users, key=_natural),
        "counts": {
            "users": int(len(np.unique(data.user[data.is_sample]))),
            "new_users": len(split.new_users),
            "train": int((split.part == TRAIN).sum()),
            "val": int((split.part == VAL).sum()),
            "test": int(len(test)),
        },
        "test": {
            "user": data.user[test].tolist(),
            "item": data.item[test].tolist(),
            "label": data.label[test].astype(int).tolist(),
            "timestamp": ts[test].tolist() if ts is not None else None,
        },
    }
    derived = data.notes.get("derived_user_attributes")
    if isinstance(derived, Mapping):
        record["derived_user_attributes"] = dict(derived)
    return record


def _natural(key: str) -> tuple[int, str]:
    return (int(key), key) if key.isdigit() else (1 << 62, key)


# --- onboarding signal (semi-synthetic; docs/DESIGN.md section 4) ---------------------------------


DECLARED_BY = ("count", "lift")  # how a user's top genres are ranked (`add_declared_genres`)


def add_declared_genres(
    data: Interactions, n_first: int = 5, top: int = 3, noise: float = 0.0, seed: int = 0, by: str = "count"
) -> Interactions:
    """A signup answer, "genres you like", built from each user's first `n_first` samples.

    Those interactions stop being samples (never trained or tested on) but stay as behavior.
    The `top` genres are those most frequent among them (`by` "count"; ties by name), or most
    over-represented against the catalog's own genre shares (`by` "lift": a genre's share of
    the user's genre tags over its share of the catalog's). Each declared genre is replaced, with
    probability `noise`, by a uniformly drawn genre: 0 is the clean signal, 1 pure noise. Needs
    item attribute "genres" (MovieLens).
    """
    if data.timestamp is None or not any(p.spec.name == "genres" for p in data.item_plan):
        raise ValueError(f"{data.name} has no timed genre data for declared genres")
    if by not in DECLARED_BY:
        raise ValueError(f"unknown ranking of declared genres {by!r}; choose from {DECLARED_BY}")
    rng = np.random.default_rng(seed)
    genres = sorted({g for a in data.items.values() for g in a.get("genres", [])})  # type: ignore[attr-defined]
    in_catalog: dict[str, int] = {}
    for a in data.items.values():
        for g in a.get("genres", []):  # type: ignore[attr-defined]
            in_catalog[g] = in_catalog.get(g, 0) + 1
    catalog_tags = sum(in_catalog.values())
    is_sample = data.is_sample.copy()
    declared: dict[str, list[str]] = {}
    order = chronological_order(data, seed)
    order = order[data.is_sample[order]]
    users = data.user[order]
    for start, end in zip(*user_runs(users), strict=True):
        first = order[start : min(end, start + n_first)]
        is_sample[first] = False
        counts: dict[str, int] = {}
        for item in data.item[first]:
            for g in data.items[str(item)].get("genres", []):  # type: ignore[attr-defined]
                counts[g] = counts.get(g, 0) + 1
        if by == "lift":
            tags = sum(counts.values())
            picked = sorted(counts, key=lambda g: (-counts[g] * catalog_tags / (tags * in_catalog[g]), g))[
                :top
            ]
        else:
            picked = sorted(counts, key=lambda g: (-counts[g], g))[:top]
        declared[str(users[start])] = [str(rng.choice(genres)) if rng.random() < noise else g for g in picked]
    notes = {
        **data.notes,
        "onboarding": {"n_first": n_first, "top": top, "noise": noise, "seed": seed, "by": by},
        "derived_user_attributes": {"genres": declared},
    }
    out = data.with_user_attribute("genres", declared, plan("genres", "genres", "tags", slots=top))
    out.is_sample = is_sample
    out.notes = notes
    return out
