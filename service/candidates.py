"""The candidate stage: for a catalog too big to score whole, the few hundred rows worth ranking.

A request without candidates scores the whole catalog with the ranking tower, which costs time in
proportion to the catalog (`benchmarks/results/catalog-size.md`). Above `MAILREC_RETRIEVE_ABOVE`
items, and only for bundles that carry item vectors (`item_vectors.npy`: what the ranker makes of
each item before it meets the user), a request is served in three steps:

1. probe: the ranker scores a fixed set of probe items for this user (half the most popular, half
   drawn at random once),
2. search: a linear model of the user's logits over the items, fitted on the probes, scores every
   item in one matrix-vector product and the best `candidates` are kept, with the `popular` most
   popular items,
3. rank: the ranker scores those candidates; they and the probes are ranked by the ranker's own
   scores, so the order of whatever is returned is exactly the ranker's.

A cold user with no history, scored by a bundle's cold checkpoint, takes a shorter way where the
bundle carries the ranker's prior (`item_prior.npy`): the `prior` items that prior ranks first
for the user's attributes are the candidates, and the ranker scores them in one call
(`PriorStage`).

The linear model's features are the item vectors' first principal components, the log of the
item's training popularity and a constant. Its weights for a user are one product with a matrix
computed at load (ridge regression on the probes), so a request pays for two ranker calls of a
few hundred rows and one pass over the catalog's (I, r) features: no index to build or keep in
step, and the stage is rebuilt with the model on every reload. The probe fit is the query: it asks
the ranker itself what it thinks of this user (real history, virtual behavior, gate, context),
whatever the tower's architecture.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from service.contract import Bundle, FloatArray, IntArray
from service.errors import BadBundle

log = logging.getLogger(__name__)

RANK = 32  # principal components of the item vectors the search uses
RIDGE = 1e-3  # ridge penalty, relative to the mean feature variance on the probes
SEED = 0  # the random half of the probes, fixed so that a bundle always gets the same stage


@dataclass(frozen=True)
class RetrieveOptions:
    above: int  # catalogs with more items than this use the stage
    candidates: int  # rows the search keeps
    probes: int  # rows the ranker scores to fit the user's linear model
    popular: int  # the most popular rows, always candidates
    prior: int = 25  # a cold user's rows from the ranker's prior (`PriorStage`), plus k; 0: off
    # the same for a cold checkpoint's user with clicks (fewer than its `clicks`), plus k and the
    # clicks; 0: they go through the search
    prior_clicked: int = 50


# the service's defaults (MAILREC_RETRIEVE_*): the smallest stage of benchmarks/stage_size.py's grid
# that keeps the whole catalog's top 10 on MovieLens 100K's validation users (no test data), and
# likewise the fewest prior rows for its validation new users (benchmarks/results/stage-size-prior.md)
# and for those with 1, 3 or 5 clicks (benchmarks/results/stage-size-prior-clicks.md)
DEFAULTS = RetrieveOptions(above=1000, candidates=100, probes=64, popular=50, prior=25, prior_clicked=50)


class PriorStage:
    """A cold user's candidates from the ranker's own prior (`service.contract.ItemPrior`): the
    `rows` items it ranks first for the user's attributes, one ranker call, no probes, no search.

    Used for a user scored by a bundle's cold checkpoint: there, the ranker's logit is that prior
    plus its learned part scaled down (`ColdCheckpoint.scale`), so the prior decides which few
    items can reach the top (benchmarks/results/stage-size-prior.md measures how many rows keep
    the whole catalog's top 10 for a user with no history; stage-size-prior-clicks.md, for one
    with their first clicks, who needs more: `clicked` rows)."""

    def __init__(
        self,
        table: npt.NDArray[np.floating[Any]],
        blocks: tuple[tuple[int, int, int], ...],
        rows: int,
        clicked: int = 0,
    ) -> None:
        self.table = np.ascontiguousarray(np.asarray(table, np.float32)[:, 1:])  # (S, I), no PAD
        self.blocks = blocks
        self.rows = rows
        self.clicked = clicked

    def rows_for(self, n_history: int) -> int:
        """The prior's rows for a user with this many clicks; 0: not this stage's user."""
        return self.rows if n_history == 0 else self.clicked

    def scores(self, user_attrs: IntArray) -> FloatArray:
        """(I,) the prior of catalog rows 1..I for one encoded user ((A,) or (1, A)): the rows its
        ids pick in each block, summed, as the graph adds them (`ItemPrior`)."""
        ids = np.asarray(user_attrs).reshape(-1)
        if not self.blocks:
            first: FloatArray = self.table[0]
            return first
        out = np.zeros(self.table.shape[1], np.float32)
        for start, stop, row in self.blocks:
            if stop - start == 1:
                out += self.table[row + int(ids[start])]
                continue
            values = ids[start:stop]
            present = values[values > 0]  # no slots, or a bag with no value: the block's first row
            out += self.table[row + present].mean(0) if len(present) else self.table[row]
        return out

    def search(self, user_attrs: IntArray, extra: int = 0, n_history: int = 0) -> IntArray:
        """The catalog rows the prior ranks first for this user, `rows_for(n_history) + extra` of
        them (where the catalog has them), in row order; `extra` makes room for k and the clicks."""
        prior = self.scores(user_attrs)
        n = min(self.rows_for(n_history) + extra, len(prior))
        best = np.argpartition(prior, len(prior) - n)[len(prior) - n :]
        return (np.sort(best) + 1).astype(np.int64)


class CandidateStage:
    """The search over one catalog's item vectors (I+1, D), row 0 PAD; `popularity` (I,) training
    counts of rows 1..I, or None (no popularity feature; probes and the popular set drawn at random)."""

    def __init__(self, vectors: FloatArray, popularity: IntArray | None, options: RetrieveOptions) -> None:
        n = vectors.shape[0] - 1
        self.options = options
        items = np.asarray(vectors[1:], np.float32)  # (I, D)
        centred = items - items.mean(0, dtype=np.float64).astype(np.float32)
        cov = (centred.T @ centred).astype(np.float64) / max(n, 1)  # (D, D)
        _, basis = np.linalg.eigh(cov)  # ascending eigenvalues
        basis = basis[:, ::-1][:, : min(RANK, items.shape[1])].astype(np.float32)  # (D, r)
        columns = [(centred @ basis).astype(np.float64)]  # (I, r)
        rng = np.random.default_rng(SEED)
        if popularity is not None:
            counts = np.asarray(popularity, np.float64)
            columns.append(np.log1p(counts)[:, None])
            by_count = np.argsort(-counts, kind="stable")  # row - 1, most popular first
        else:
            by_count = rng.permutation(n)
        columns.append(np.ones((n, 1)))
        features = np.hstack(columns)  # (I, f)
        self.features = np.ascontiguousarray(features, np.float32)
        n_probes = min(options.probes, n)
        top = by_count[: n_probes // 2]
        rest = np.setdiff1d(np.arange(n), top)
        probes = np.sort(np.r_[top, rng.choice(rest, n_probes - len(top), replace=False)])
        self.probes: IntArray = (probes + 1).astype(np.int64)  # catalog rows
        x = features[probes]  # (P, f)
        gram = x.T @ x
        penalty = RIDGE * np.trace(gram) / gram.shape[0]
        # weights = fit @ logits: ridge regression of the probes' logits on their features
        self.fit = np.linalg.solve(gram + penalty * np.eye(gram.shape[0]), x.T).astype(np.float32)  # (f, P)
        self.popular: IntArray = (np.sort(by_count[: options.popular]) + 1).astype(np.int64)
        self._is_probe = np.zeros(n + 1, bool)
        self._is_probe[self.probes] = True

    def search(self, probe_scores: FloatArray, extra: int = 0) -> IntArray:
        """Catalog rows to rank besides the probes, given the ranker's probabilities for the probes:
        the `candidates + extra` best others by the fitted linear model, and the most popular,
        deduplicated. `extra` makes room for rows the caller will drop (the user's seen items) and
        for k: at least `candidates + extra` rows come back where the catalog has them."""
        p = np.clip(np.asarray(probe_scores, np.float64), 1e-7, 1 - 1e-7)
        weights = self.fit @ np.log(p / (1 - p)).astype(np.float32)  # (f,)
        # numpy's own loop, not BLAS: OpenBLAS runs a product this size on all its threads, and on
        # a busy host a thread waiting for a core cost 10-27 ms per call at 20,000 items (measured)
        approx = np.einsum("if,f->i", self.features, weights)  # (I,)
        approx[self.probes - 1] = -np.inf  # scored already
        n = min(self.options.candidates + extra, len(approx) - len(self.probes))
        best = np.argpartition(approx, len(approx) - n)[len(approx) - n :] + 1 if n > 0 else self.popular[:0]
        rows = np.union1d(best, self.popular)
        return rows[~self._is_probe[rows]]


def prior_stage(parent: Bundle, options: RetrieveOptions) -> PriorStage | None:
    """The candidates of `parent`'s cold checkpoint from its ranker's prior, where it has one whose
    learned part is scaled down (`ColdCheckpoint.scale` < 1: the prior decides its top; measured
    at the default 0.25, benchmarks/results/stage-size-prior.md), its catalog is larger than
    `options.above`, it carries the prior's table and `options.prior` or `options.prior_clicked`
    is not 0."""
    bundle, pin = parent.cold, parent.manifest.cold_checkpoint
    if bundle is None or pin is None or pin.scale >= 1:
        return None
    path, prior = bundle.item_prior_path, bundle.manifest.item_prior
    off = options.prior <= 0 and options.prior_clicked <= 0
    if path is None or prior is None or off or len(bundle.catalog) <= options.above:
        return None
    table = np.load(path, allow_pickle=False)
    if table.ndim != 2 or table.shape[1] != len(bundle.catalog) + 1:
        raise BadBundle(f"{bundle.path}: item prior of shape {table.shape} for {len(bundle.catalog)} items")
    if any(row < 0 or row >= len(table) for _, _, row in prior.blocks):
        raise BadBundle(f"{bundle.path}: item prior blocks {prior.blocks} for {len(table)} rows")
    return PriorStage(table, prior.blocks, options.prior, options.prior_clicked)


def candidate_stage(bundle: Bundle, options: RetrieveOptions) -> CandidateStage | None:
    """The bundle's candidate stage if its catalog is larger than `options.above` and it carries
    item vectors, else None (requests without candidates score the whole catalog)."""
    path = bundle.item_vectors_path
    catalog = bundle.catalog
    if path is None or len(catalog) <= options.above:
        return None
    started = time.perf_counter()
    vectors = np.load(path, allow_pickle=False)
    if vectors.ndim != 2 or vectors.shape[0] != len(catalog) + 1:
        raise BadBundle(f"{bundle.path}: item vectors of shape {vectors.shape} for {len(catalog)} items")
    stage = CandidateStage(vectors, catalog.popularity, options)
    log.info(
        "%s: candidate stage over %d items built in %.2f s",
        bundle.path,
        len(catalog),
        time.perf_counter() - started,
    )
    return stage
