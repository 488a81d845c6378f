"""Cold-start baselines that share MAIL's split, ranking tower and training loop.

Each one reaches the ranking tower where MAIL does, through the virtual-behavior input (the
model-agnostic contract), or, for MetaEmb, through the user-id embedding:

* `MeanFill`: virtual behavior := old users' mean behavior representation; no zero-shot tower.
* `LLAE` (Li et al., AAAI 2019): a linear auto-encoder with tied weights, behavior -> attributes
  (encoder W) -> behavior (decoder W^T), a nuclear-norm (low-rank) penalty on W; virtual behavior
  = W^T a.
* `DropoutNet` (Volkovs et al., NeurIPS 2017): in training, an old user's behavior and user id are
  dropped at random, so the ranker learns to serve empty histories and unknown ids.
* `MetaEmb` (Pan et al., SIGIR 2019): a generator of the user-id embedding from the other
  attributes, meta-trained with a cold-start loss on one half of a user's samples and a warm-up
  loss, after one gradient step on the generated embedding, on the other half; it replaces the
  embedding of out-of-vocabulary (new) user ids.

The generators stand in the zero-shot tower's place (`MailModel.zst`) and are trained by its
optimizer on detached embeddings, exactly as the ZST is; `TrainHooks` subclasses plug them in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import replace

import torch
from torch import Tensor, nn

from model_export.catalog import user_id_slot
from model_export.model import (
    FeatureEmbeddings,
    MailModel,
    ModelConfig,
    UserInputs,
    ZeroShotConfig,
    ZeroShotTower,
    ZstLosses,
    masked_mse,
)
from model_export.train import TrainHooks, row_losses
from service.contract import OOV, Schema

# --- generators in the zero-shot tower's place ----------------------------------------------


class Generator(ZeroShotTower):
    """Attributes -> virtual behavior (B, K, d), with losses on old users: the ZST's interface.

    Subclasses ZeroShotTower for what `train` and `MailModel` call (`virtual_behavior`, `losses`,
    `cfg` with the loss weights), not for its layers, which are never built.
    """

    def __init__(self, cfg: ZeroShotConfig, attr_slots: int, behavior_slots: int, d: int) -> None:
        nn.Module.__init__(self)
        self.cfg = cfg
        self.attr_slots, self.behavior_slots, self.d = attr_slots, behavior_slots, d


class MeanFill(Generator):
    """Virtual behavior = the running mean of old users' behavior representation (EMA of batches).

    No parameters: the mean follows the embeddings as they train. L_v logs its squared error.
    """

    def __init__(self, attr_slots: int, behavior_slots: int, d: int, momentum: float = 0.9):
        super().__init__(ZeroShotConfig(w_a=0.0, w_d=0.0), attr_slots, behavior_slots, d)
        self.momentum = momentum
        self.mean: Tensor
        self.register_buffer("mean", torch.zeros(behavior_slots, d))

    def virtual_behavior(self, attrs: Tensor, mask: Tensor) -> Tensor:
        return self.mean.expand(attrs.shape[0], -1, -1)  # (B, K, d)

    def losses(self, attrs: Tensor, attr_mask: Tensor, behavior: Tensor, beh_mask: Tensor) -> ZstLosses:
        # behavior (B, K, d), beh_mask (B, K): the batch's mean per slot feeds the EMA
        if self.training:
            m = beh_mask[..., None].float()
            batch_mean = (behavior * m).sum(0) / m.sum(0).clamp(min=1)
            seen = (m.sum(0) > 0).float()  # (K, 1): slots with at least one value
            self.mean.mul_(1 - (1 - self.momentum) * seen).add_((1 - self.momentum) * seen * batch_mean)
        l_v = masked_mse(self.virtual_behavior(attrs, attr_mask), behavior, beh_mask)
        zero = attrs.new_zeros(())
        return ZstLosses(zero, l_v, zero)


class LLAE(Generator):
    """Low-rank linear auto-encoder (Li et al. 2019) on flattened attribute and behavior vectors.

    Losses, under the ZST's names so they log and weigh alike: L_v = |v - W^T a|^2 (behavior
    from attributes), L_a = |W v - a|^2 (attributes from behavior), L_d = |W|_* (nuclear norm),
    weighted w_v = 1, w_a = `attr_weight`, w_d = `rank_weight` (the paper's "low-rank weight").
    """

    def __init__(
        self,
        attr_slots: int,
        behavior_slots: int,
        d: int,
        rank_weight: float,
        attr_weight: float = 1.0,
    ) -> None:
        cfg = ZeroShotConfig(w_a=attr_weight, w_v=1.0, w_d=rank_weight)
        super().__init__(cfg, attr_slots, behavior_slots, d)
        self.w = nn.Parameter(0.01 * torch.randn(behavior_slots * d, attr_slots * d))  # W: v -> a

    def virtual_behavior(self, attrs: Tensor, mask: Tensor) -> Tensor:
        # attrs (B, A, d) -> (B, K, d) = W^T a
        a = (attrs * mask[..., None]).flatten(1)  # (B, A*d)
        return (a @ self.w.T).reshape(attrs.shape[0], self.behavior_slots, self.d)

    def losses(self, attrs: Tensor, attr_mask: Tensor, behavior: Tensor, beh_mask: Tensor) -> ZstLosses:
        b = attrs.shape[0]
        l_v = masked_mse(self.virtual_behavior(attrs, attr_mask), behavior, beh_mask)
        v = (behavior * beh_mask[..., None]).flatten(1)  # (B, K*d)
        attr_pred = (v @ self.w).reshape(b, self.attr_slots, self.d)
        l_a = masked_mse(attr_pred, attrs, attr_mask)
        return ZstLosses(l_a, l_v, torch.linalg.matrix_norm(self.w, ord="nuc"))


class GeneratorModel(MailModel):
    """The ranking tower of `cfg` (no zero-shot tower) with a baseline generator in its place."""

    def __init__(
        self,
        cfg: ModelConfig,
        schema: Schema,
        catalog_features: Tensor,
        make: Callable[[int, int, int], Generator],
    ) -> None:
        super().__init__(replace(cfg, model="control", zero_shot=None), schema, catalog_features)
        self.zst = make(schema.user_slots, self.ranker.virtual_slots, schema.d_embed)


class GeneratorHooks(TrainHooks):
    """Train `GeneratorModel`s: the generator takes the ZST's place, losses and optimizer."""

    def __init__(self, make: Callable[[int, int, int], Generator]) -> None:
        self.make = make

    def build(self, cfg: ModelConfig, schema: Schema, catalog_features: Tensor) -> MailModel:
        return GeneratorModel(cfg, schema, catalog_features, self.make)


def mean_fill() -> GeneratorHooks:
    return GeneratorHooks(lambda a, k, d: MeanFill(a, k, d))


def llae(rank_weight: float, attr_weight: float = 1.0) -> GeneratorHooks:
    return GeneratorHooks(lambda a, k, d: LLAE(a, k, d, rank_weight, attr_weight))


# --- DropoutNet -----------------------------------------------------------------------------


class DropoutNet(TrainHooks):
    """With probability `p` per training row of an old user: behavior -> empty, user id -> OOV."""

    def __init__(self, p: float, seed: int = 0) -> None:
        self.p = p
        self.gen = torch.Generator().manual_seed(seed)
        self.id_slot: int | None = None

    def build(self, cfg: ModelConfig, schema: Schema, catalog_features: Tensor) -> MailModel:
        self.id_slot = user_id_slot(schema)
        return super().build(cfg, schema, catalog_features)

    def batch(self, batch: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        attrs, ctx, beh, item, label, is_new = batch
        drop = (torch.rand(len(attrs), generator=self.gen) < self.p) & ~is_new  # (B,)
        assert self.id_slot is not None, "build() first"
        attrs, beh = attrs.clone(), beh.clone()
        attrs[drop, self.id_slot] = OOV
        beh[drop] = 0
        return attrs, ctx, beh, item, label, is_new


# --- MetaEmb --------------------------------------------------------------------------------


class IdGenerator(nn.Module):
    """The other attribute embeddings (B, A-1, d) -> a user-id embedding (B, d)."""

    def __init__(self, n_slots: int, d: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_slots * d, hidden), nn.LeakyReLU(), nn.Linear(hidden, d))

    def forward(self, others: Tensor, mask: Tensor) -> Tensor:
        return self.net((others * mask[..., None]).flatten(1))


class MetaEmbeddings(FeatureEmbeddings):
    """Embeddings whose out-of-vocabulary user ids get a generated embedding (MetaEmb)."""

    def __init__(self, schema: Schema, catalog_features: Tensor, hidden: int = 64) -> None:
        super().__init__(schema, catalog_features)
        self.id_slot = user_id_slot(schema)
        self.generator = IdGenerator(schema.user_slots - 1, schema.d_embed, hidden)
        self._forced: Tensor | None = None

    def generate(self, emb: Tensor, mask: Tensor) -> Tensor:
        """(B, A, d) attribute embeddings -> (B, d) generated id embeddings, inputs detached."""
        keep = [i for i in range(emb.shape[1]) if i != self.id_slot]
        return self.generator(emb[:, keep].detach(), mask[:, keep])

    @contextlib.contextmanager
    def forced_id(self, id_embedding: Tensor) -> Iterator[None]:
        """Within the block, every row's user-id embedding is `id_embedding` (B, d)."""
        self._forced = id_embedding
        try:
            yield
        finally:
            self._forced = None

    def user_fields(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        emb, mask = super().user_fields(ids)  # (B, A, d), (B, A)
        s = self.id_slot
        if self._forced is not None:
            return torch.cat([emb[:, :s], self._forced[:, None], emb[:, s + 1 :]], 1), mask
        cold = ids[:, s] == OOV  # (B,)
        if not bool(cold.any()):
            return emb, mask
        gen = torch.where(cold[:, None], self.generate(emb, mask), emb[:, s])  # (B, d)
        return torch.cat([emb[:, :s], gen[:, None], emb[:, s + 1 :]], 1), mask


class MetaEmbModel(MailModel):
    """The ranking tower of `cfg` (no zero-shot tower) over `MetaEmbeddings`."""

    emb: MetaEmbeddings

    def __init__(self, cfg: ModelConfig, schema: Schema, catalog_features: Tensor, hidden: int = 64) -> None:
        super().__init__(replace(cfg, model="control", zero_shot=None), schema, catalog_features)
        self.emb = MetaEmbeddings(schema, catalog_features, hidden)
        self.ranker.emb = self.emb


class MetaEmb(TrainHooks):
    """Meta-train the id generator after each ranker step, the ranker frozen (Pan et al. 2019).

    A batch's rows are split at random into halves a and b; a user with rows in both is a task.
    Cold-start loss l_a: rows a scored with the generated id embedding phi and empty behavior (a
    new user has neither). Warm-up loss l_b: rows b scored with phi' = phi - `cold_lr` * dl_a/dphi,
    one gradient step per user. The generator alone steps on `alpha` l_a + (1 - alpha) l_b.
    """

    def __init__(self, alpha: float, lr: float, cold_lr: float = 0.1, seed: int = 0) -> None:
        self.alpha, self.lr, self.cold_lr = alpha, lr, cold_lr
        self.gen = torch.Generator().manual_seed(seed)
        self.opt: torch.optim.Optimizer | None = None

    def build(self, cfg: ModelConfig, schema: Schema, catalog_features: Tensor) -> MailModel:
        model = MetaEmbModel(cfg, schema, catalog_features)
        self.opt = torch.optim.Adam(model.emb.generator.parameters(), lr=self.lr)
        return model

    def after_step(self, model: MailModel, batch: tuple[Tensor, ...]) -> dict[str, float]:
        assert isinstance(model, MetaEmbModel) and self.opt is not None
        attrs, ctx, beh, item, label, is_new = batch
        emb = model.emb
        users = attrs[:, emb.id_slot]
        half = torch.rand(len(users), generator=self.gen) < 0.5  # (B,) True: a, False: b
        both = set(users[half & ~is_new].tolist()) & set(users[~half & ~is_new].tolist())
        if len(both) < 2:
            return {}
        rows = (torch.isin(users, torch.tensor(sorted(both))) & ~is_new).nonzero().squeeze(1)
        tasks, task_of = torch.unique(users[rows], return_inverse=True)  # (T,), (R,)
        first = torch.empty(len(tasks), dtype=torch.long)
        first[task_of] = rows  # a row of each task (a user's rows share their attributes)
        with torch.no_grad():
            user_emb, user_mask = emb.user_fields(attrs[first])
        phi = emb.generate(user_emb, user_mask)  # (T, d)
        in_a = half[rows]

        def task_loss(id_emb: Tensor, pick: Tensor) -> Tensor:
            """Mean over tasks of each task's mean loss (L_rt's) on its `pick` rows, as a new user."""
            sel, task = rows[pick], task_of[pick]
            cold = UserInputs(
                attrs[sel],
                ctx[sel],
                torch.zeros_like(beh[sel]),  # a new user has no behavior
                torch.zeros(len(sel), model.virtual_slots, emb.d),
                torch.zeros(len(sel), 1),
            )
            with emb.forced_id(id_emb[task]):
                losses = row_losses(model, cold, item[sel], label[sel], self.log_q)  # as L_rt's rows
            total = torch.zeros(len(tasks)).index_add(0, task, losses)
            count = torch.zeros(len(tasks)).index_add(0, task, torch.ones_like(losses))
            return (total / count).mean()

        was_training = model.ranker.training
        model.ranker.eval()  # frozen: no dropout, batch-norm statistics untouched
        try:
            l_a = task_loss(phi, in_a)
            (grad,) = torch.autograd.grad(l_a * len(tasks), phi, create_graph=True)  # per task
            l_b = task_loss(phi - self.cold_lr * grad, ~in_a)
            params = list(emb.generator.parameters())
            grads = torch.autograd.grad(self.alpha * l_a + (1 - self.alpha) * l_b, params)
        finally:
            model.ranker.train(was_training)
        self.opt.zero_grad(set_to_none=True)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return {"L_cold": float(l_a.detach()), "L_warm": float(l_b.detach())}
