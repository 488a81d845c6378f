"""The two towers of MAIL and the embeddings they share.

* `FeatureEmbeddings`: one table per field (PAD row 0 stays zero), and the item representation
  (sum of an item's field embeddings; bags mean-pooled), the same for targets and behavior items.
* Ranking towers (`BaseDNN`, `DINRanker`): any embedding-based CTR model. Each declares the
  behavior representation it consumes, `behavior_target()`, with `virtual_slots` vectors; the
  zero-shot tower reconstructs exactly that, so a new user's virtual behavior drops in unchanged.
* `ZeroShotTower`: dual residual auto-encoders (attributes, behavior), both decoders on both codes
  (Eq. 3-4), alignment by Gaussian MMD or paired MSE (Eq. 5-6); virtual behavior = D2(E1(a))
  (Eq. 8).
  It never names a ranker: the same class serves every tower. Its losses (`ZstLosses`) sit with
  it, and `zst_step_losses` picks a training batch's rows they are computed on; the exported
  graph reads `virtual_behavior` only.

Every tower takes user-side tensors with batch U and item-side tensors with batch N, where U == N
(training: one target per sample) or U == 1 (serving: one user against N candidates). Broadcasting
does the rest, so the exported graph is the trained module, without tiling the user N times.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model_export.catalog import user_field_slots, user_id_slot
from service.contract import Schema

NEG = -1e9  # logit of a masked position


VIRTUAL_ATTENTION = ("shared", "own", "own-detached")  # RankerConfig.virtual_attention


@dataclass
class RankerConfig:
    kind: str = "base"  # "base" (BaseDNN) | "din" (DIN-style target attention)
    hidden: tuple[int, ...] = (256, 128)
    dropout: float = 0.2
    d_attention: int = 64  # width of the attention MLPs (Eq. 1-2 pooling, DIN's activation unit)
    virtual_slots: int = 0  # 0: the tower's default (base: 1 pooled vector; din: 4 recent items)
    # a learned per-item bias added to the logit (the first-order term of FM / wide & deep): how
    # much an item is chosen regardless of the user, which is all a tower knows of a new user's
    # taste when the attributes say little (checkpoints from before this setting have none)
    item_bias: bool = False
    # a fixed per-item offset on the logit, the log of the item's smoothed share of the liked
    # training interactions (`model_export.popular.log_prior`): the tower learns how a user departs
    # from the popular list, so a user it can tell nothing about is ranked as that list ranks them
    item_prior: bool = False
    # with `item_prior`, the list of the user's segment: their value of this user attribute, its
    # share shrunk towards the overall one by `prior_shrink` pseudo-counts (an attribute with
    # several values, "genres you like": the mean of its values' log lists); "" = the overall
    # list; "auto" = chosen with the shrinkage on validation when training starts
    prior_segment: str = ""
    prior_shrink: float = 0.0
    # with `item_prior`, a signup answer: a user attribute that holds several values ("genres you
    # like"). Each value's list, shrunk by `prior_answer_shrink` pseudo-counts, gives a log lift
    # over the overall list per item; the mean over the user's values is added to the segment's
    # list; "" = none. With `prior_segment` "auto", chosen (or not) on validation with it
    prior_answer: str = ""
    prior_answer_shrink: float = 0.0
    # the weights that read the virtual behavior. "shared": those that read real behavior (the
    # official code's reading of Eq. 8: DIN's target-attention unit, BaseDNN's behavior columns of
    # the first layer), which MAIL's cold rows then train on virtual behavior too; "own": weights
    # of their own (DIN: a second unit of the same shape; BaseDNN: d more columns of the first
    # layer, the real slot empty for a user without history), so the way real history is read
    # learns from real history only, as it does in control; "own-detached": DIN's own unit, and
    # the virtual read trains no embedding (its target item's embedding detached), so cold rows
    # reach the rest of the tower through the head alone (BaseDNN: "own", whose virtual read
    # reaches no embedding either way: the virtual behavior is an input, and no target is read)
    virtual_attention: str = "shared"

    def __post_init__(self) -> None:
        if self.virtual_attention not in VIRTUAL_ATTENTION:
            raise ValueError(
                f"virtual_attention is one of {VIRTUAL_ATTENTION}, not {self.virtual_attention!r}"
            )


@dataclass
class ZeroShotConfig:
    d_hidden: int = 128  # width of the aligned codes p, q
    width: int = 256  # first layer of each encoder/decoder (the paper's 1024 at our scale)
    dropout: float = 0.2
    d_attention: int = 64
    align: str = "mmd"  # "mmd" (paper, Eq. 5-6) | "mse" (official code, paired)
    mmd_sigma: float = 1.0
    w_a: float = 1.0  # weight of L_a (Eq. 3)
    w_v: float = 1.0  # weight of L_v (Eq. 4)
    w_d: float = 1.0  # weight of L_d (alignment)
    cross: bool = True  # both decoders on both codes; False = each decoder on its own code
    variant: str = "full"  # "full" | "none": a linear attributes -> behavior map, no ZST loss


# --- shared pieces ------------------------------------------------------------------------------


class AttentionPool(nn.Module):
    """Self-attention pooling of Eq. 1-2: alpha = softmax(z^T tanh(W x + b)) over valid slots."""

    def __init__(self, d: int, d_attention: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d, d_attention)
        self.z = nn.Linear(d_attention, 1, bias=False)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        # x (B, S, d), mask (B, S) bool -> (B, d); all-masked rows pool to zeros
        logits = self.z(torch.tanh(self.proj(x))).squeeze(-1)  # (B, S)
        alpha = torch.softmax(logits.masked_fill(~mask, NEG), dim=-1) * mask
        return torch.einsum("bs,bsd->bd", alpha, x)


def mlp(sizes: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for d_in, d_out in zip(sizes, sizes[1:], strict=False):
        layers += [
            nn.Dropout(dropout),
            nn.Linear(d_in, d_out),
            nn.BatchNorm1d(d_out),
            nn.LeakyReLU(),
        ]
    return nn.Sequential(*layers)


def fold_batchnorm(linear: nn.Linear, bn: nn.BatchNorm1d) -> nn.Linear:
    """Eval-mode BN(linear(x)) as one linear layer: W' = s W, b' = s (b - mean) + beta."""
    scale, shift = bn_affine(bn)
    folded = nn.Linear(linear.in_features, linear.out_features)
    with torch.no_grad():
        folded.weight.copy_(linear.weight * scale[:, None])
        bias = linear.bias if linear.bias is not None else torch.zeros_like(scale)
        folded.bias.copy_(bias * scale + shift)
    return folded


def bn_affine(bn: nn.BatchNorm1d) -> tuple[Tensor, Tensor]:
    """Eval-mode BN(x) = scale * x + shift."""
    assert bn.running_mean is not None and bn.running_var is not None
    with torch.no_grad():
        scale = bn.running_var.add(bn.eps).rsqrt()
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale
        if bn.bias is not None:
            shift = shift + bn.bias
    return scale, shift


def fold_mlp(seq: nn.Sequential) -> nn.Sequential:
    """An eval-mode `mlp()`: dropout gone, each BN folded into the linear layer before it."""
    layers: list[nn.Module] = []
    for m in seq:
        if isinstance(m, nn.Dropout):
            continue
        if isinstance(m, nn.BatchNorm1d):
            last = layers.pop()
            assert isinstance(last, nn.Linear), "a batch norm folds into the linear layer before it"
            layers.append(fold_batchnorm(last, m))
        else:
            layers.append(m)
    return nn.Sequential(*layers)


class FeatureEmbeddings(nn.Module):
    """Per-field tables for the user, item and context groups, and the catalog of item features."""

    def __init__(self, schema: Schema, catalog_features: Tensor) -> None:
        super().__init__()
        d = schema.d_embed
        self.d = d

        def tables(fields: Any) -> nn.ModuleList:
            return nn.ModuleList(nn.Embedding(f.cardinality, d, padding_idx=0) for f in fields)

        self.user = tables(schema.user_fields)
        self.item = tables(schema.item_fields)
        self.context = tables(schema.context_fields)
        self.user_slices = _slices(f.slots for f in schema.user_fields)
        self.item_slices = _slices(f.slots for f in schema.item_fields)
        self.context_slices = _slices(f.slots for f in schema.context_fields)
        self.catalog: Tensor
        self.register_buffer("catalog", catalog_features.long(), persistent=True)  # (I+1, M)
        self.item_table: Tensor | None = None  # (I+1, d) once frozen for serving
        # once frozen: each group's per-field tables as one table, slot ids offset into it
        self.fused: dict[str, tuple[Tensor, Tensor]] = {}
        for table in (*self.user, *self.item, *self.context):
            nn.init.normal_(table.weight, std=0.05)
            with torch.no_grad():
                table.weight[:2].zero_()  # PAD stays zero; OOV starts neutral

    @staticmethod
    def _fields(tables: nn.ModuleList, slices: list[slice], ids: Tensor) -> tuple[Tensor, Tensor]:
        # ids (B, S) -> embeddings (B, S, d), mask (B, S)
        emb = torch.cat([t(ids[:, s]) for t, s in zip(tables, slices, strict=True)], dim=1)
        return emb, ids > 0

    def user_fields(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        if "user" in self.fused:
            return self._fused_fields("user", ids)
        return self._fields(self.user, self.user_slices, ids)

    def context_fields(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        if "context" in self.fused:
            return self._fused_fields("context", ids)
        return self._fields(self.context, self.context_slices, ids)

    def _fused_fields(self, group: str, ids: Tensor) -> tuple[Tensor, Tensor]:
        table, offsets = self.fused[group]  # one gather instead of a slice and a gather per field
        return table[ids + offsets], ids > 0

    def items(self, rows: Tensor) -> Tensor:
        """Catalog rows (any shape) -> item representations (..., d); row 0 -> zeros."""
        if self.item_table is not None:  # serving: looked up, computed once at export
            return self.item_table[rows]
        flat = rows.reshape(-1)
        if flat.numel() > self.catalog.shape[0]:
            # More rows than the catalog (a batch of behavior sequences): represent every item
            # once and gather. Same values, and on MovieLens about 10x fewer rows to embed per batch.
            return self._represent(self.catalog).index_select(0, flat).reshape(*rows.shape, self.d)
        return self._represent(self.catalog[flat]).reshape(*rows.shape, self.d)

    def _represent(self, feats: Tensor) -> Tensor:
        # catalog feature ids (R, M) -> item representations (R, d)
        parts = []
        for table, s in zip(self.item, self.item_slices, strict=True):
            ids = feats[:, s]  # (R, slots)
            emb = table(ids)  # (R, slots, d)
            count = (ids > 0).sum(1, keepdim=True).clamp(min=1)
            parts.append(emb.sum(1) / count)  # bags are mean-pooled
        return torch.stack(parts, 0).sum(0)

    def freeze_for_serving(self) -> Tensor:
        """Serving: every catalog item's representation computed once, (I+1, d), then looked up;
        the user and context groups each one table (their fields' tables stacked, ids offset)."""
        with torch.no_grad():
            self.item_table = _freeze(self.items(torch.arange(self.catalog.shape[0])))
            for group, tables, slices in (
                ("user", self.user, self.user_slices),
                ("context", self.context, self.context_slices),
            ):
                weights = [t.weight for t in tables if isinstance(t, nn.Embedding)]
                starts = torch.tensor([0, *(len(w) for w in weights)]).cumsum(0)[:-1]
                widths = torch.tensor([s.stop - s.start for s in slices])
                offsets = torch.repeat_interleave(starts, widths)  # (slots,): the field's first row
                self.fused[group] = (_freeze(torch.cat(weights)), offsets)
        return self.item_table


def _freeze(table: Tensor) -> Tensor:
    return table.detach().clone().contiguous()


def _slices(widths: Any) -> list[slice]:
    out, start = [], 0
    for w in widths:
        out.append(slice(start, start + w))
        start += w
    return out


class UserInputs(NamedTuple):
    """User-side inputs of a ranking tower, batch U (N in training, 1 in serving)."""

    attrs: Tensor  # (U, A) ids
    context: Tensor  # (U, C) ids
    behavior: Tensor  # (U, L) catalog rows, most recent first
    virtual: Tensor  # (U, K, d) virtual behavior (zeros when unused)
    gate: Tensor  # (U, 1) weight of the virtual behavior


# --- ranking towers -----------------------------------------------------------------------------


class Ranker(nn.Module):
    """A ranking tower: scores (user, target item) pairs from the shared embeddings."""

    default_slots = 1
    out: nn.Linear  # every tower's last layer: its logit before the item bias and prior

    def __init__(self, cfg: RankerConfig, emb: FeatureEmbeddings) -> None:
        super().__init__()
        self.cfg = cfg
        self.emb = emb
        self.virtual_slots = cfg.virtual_slots or self.default_slots
        self.item_bias: nn.Parameter | None = (
            nn.Parameter(torch.zeros(emb.catalog.shape[0])) if cfg.item_bias else None
        )
        # the prior: (S, I+1), one row per segment (S = 1: the overall list); a buffer, in the
        # checkpoint and the exported graph, never trained
        # how a user's ids pick the prior's rows: blocks (first slot, end slot, first row), one
        # per attribute, their rows summed (an attribute of one slot: its row; a bag of values:
        # the mean of their rows; no slots: the block's one row for everyone); none: row 0
        self.prior_blocks: list[tuple[int, int, int]] = []
        self.item_log_prior: Tensor | None
        self.register_buffer(
            "item_log_prior", torch.zeros(1, emb.catalog.shape[0]) if cfg.item_prior else None
        )

    def segment_prior(self, attributes: list[tuple[slice, int]]) -> None:
        """The prior's layout (before it is set): for each user attribute (its slots and
        vocabulary size) one row per id, in order; empty slots: one row for everyone."""
        if self.item_log_prior is None:
            raise ValueError("this ranker has no item prior (RankerConfig.item_prior)")
        row = 0
        for slots, cardinality in attributes:
            self.prior_blocks.append((slots.start, slots.stop, row))
            row += cardinality
        self.item_log_prior = torch.zeros(row, self.item_log_prior.shape[1])

    def set_item_prior(self, prior: Tensor) -> None:
        """The fixed offsets, (S, I+1) log shares (`model_export.popular.log_prior`)."""
        if self.item_log_prior is None:
            raise ValueError("this ranker has no item prior (RankerConfig.item_prior)")
        if prior.shape != self.item_log_prior.shape:
            raise ValueError(
                f"prior of shape {tuple(prior.shape)}, expected {tuple(self.item_log_prior.shape)}"
            )
        self.item_log_prior.copy_(prior)

    def _bias(self, items: Tensor, attrs: Tensor, owner: Tensor | None) -> Tensor | float:
        """The item bias and prior of target catalog rows (N,) for users (U, A) (`owner` as in
        `forward`), or 0 without either."""
        bias: Tensor | float = self.item_bias[items] if self.item_bias is not None else 0.0
        if self.item_log_prior is None:
            return bias
        if not self.prior_blocks:
            return bias + self.item_log_prior[0][items]
        # gathers on the flattened table (two index tensors export as several ONNX operators)
        n_columns = self.item_log_prior.shape[1]
        flat = self.item_log_prior.reshape(-1)
        parts: list[Tensor] = []
        for start, stop, row in self.prior_blocks:
            if start == stop:  # one row for everyone
                parts.append(flat[row * n_columns + items])
                continue
            if stop - start == 1:  # the graph a one-attribute prior always had: one gather
                segment = attrs[:, start]  # (U,)
                if owner is not None:
                    segment = segment[owner]  # (N,); otherwise U is N or 1 (broadcast)
                parts.append(flat[(segment + row if row else segment) * n_columns + items])
                continue
            ids = attrs[:, start:stop]  # (U, k)
            if owner is not None:
                ids = ids[owner]  # (N, k)
            if row:
                ids = ids + row
            # a bag of values ("genres you like"): the mean of its values' rows; an empty bag
            # reads the PAD id's row, which no training user has: the block's overall row
            rows = flat[ids * n_columns + items[:, None]]  # (N, k)
            present = ids > row
            present = torch.cat([present[:, :1] | ~present.any(1, keepdim=True), present[:, 1:]], 1)
            weight = present.to(rows.dtype)
            parts.append((rows * weight).sum(1) / weight.sum(1))
        prior = parts[0]
        for part in parts[1:]:
            prior = prior + part
        return bias + prior

    def scale_learned(self, scale: float) -> None:
        """In place: the learned part of the logit (the output layer's, and the item bias) times
        `scale`, the fixed prior untouched, so the logit becomes prior + scale * (what the tower
        learned over it): 0 is the prior's list alone, 1 the tower as trained
        (`TrainConfig.cold_scale`)."""
        if self.item_log_prior is None:
            raise ValueError("scaling the learned logit needs a prior (RankerConfig.item_prior)")
        with torch.no_grad():
            self.out.weight.mul_(scale)
            self.out.bias.mul_(scale)
            if self.item_bias is not None:
                self.item_bias.mul_(scale)

    def behavior_target(self, behavior: Tensor) -> tuple[Tensor, Tensor]:
        """What the tower consumes as behavior: (U, K, d) vectors and their (U, K) mask."""
        raise NotImplementedError

    def forward(self, user: UserInputs, items: Tensor, owner: Tensor | None = None) -> Tensor:
        """Logits (N,) for target catalog rows (N,).

        User batch U is N (one user per target) or 1 (one user, broadcast); with `owner` (N,),
        U users are scored together and target n belongs to user owner[n] (micro-batching). Each
        user-side tensor is computed once per user, then gathered.
        """
        raise NotImplementedError

    def forward_no_history(self, user: UserInputs, items: Tensor) -> Tensor:
        """`forward` for one user with no behavior (`user.behavior` is not read): the same logits
        in a smaller graph, where a tower has one (`has_no_history`)."""
        raise NotImplementedError

    @property
    def has_no_history(self) -> bool:
        """Whether this tower has `forward_no_history` (export writes ranker_no_history.onnx)."""
        return type(self).forward_no_history is not Ranker.forward_no_history

    def freeze_for_serving(self) -> None:
        """For export, in eval mode, on a copy: the item side of the tower as lookup tables over
        the catalog, so a request gathers rows instead of recomputing every candidate's item
        embedding; batch norms folded into linear layers; fewer, larger gathers. The same function,
        in fewer ONNX nodes (export checks parity against the unfrozen model)."""
        self.emb.freeze_for_serving()

    def item_vectors(self) -> Tensor:
        """After `freeze_for_serving`: what the tower makes of each catalog item before it meets the
        user, (I+1, D), row 0 PAD; the service's candidate stage searches these."""
        assert self.emb.item_table is not None, "freeze_for_serving first"
        return self.emb.item_table

    def _groups(self, user: UserInputs) -> tuple[Tensor, Tensor]:
        attrs, _ = self.emb.user_fields(user.attrs)
        ctx, _ = self.emb.context_fields(user.context)
        return attrs.sum(1), ctx.sum(1)  # sum-pooled groups (Eq. 11): (U, d) each


class BaseDNN(Ranker):
    """The paper's BaseDNN: sum-pooled groups, attention-pooled behavior, BN MLP (Eq. 11-13)."""

    default_slots = 1

    def __init__(self, cfg: RankerConfig, emb: FeatureEmbeddings) -> None:
        super().__init__(cfg, emb)
        d = emb.d
        self.pool = AttentionPool(d, cfg.d_attention)
        self.drop = nn.Dropout(cfg.dropout)
        self.user_proj = nn.Linear(3 * d, cfg.hidden[0])  # first layer, split user | item so the
        self.item_proj = nn.Linear(d, cfg.hidden[0], bias=False)  # user side runs once per call
        self.bn = nn.BatchNorm1d(cfg.hidden[0])
        self.top = mlp(list(cfg.hidden), cfg.dropout)
        self.out = nn.Linear(cfg.hidden[-1], 1)
        self.item_hidden_table: Tensor | None = None  # (I+1, H0) once frozen for serving
        # cfg.virtual_attention "own": the virtual behavior's own columns of the first layer (the
        # behavior group's columns then read real history only); created last, so every other
        # weight starts as it does in the shared tower
        self.virtual_proj: nn.Linear | None = (
            nn.Linear(d, cfg.hidden[0], bias=False) if cfg.virtual_attention != "shared" else None
        )

    def freeze_for_serving(self) -> None:
        table = self.emb.freeze_for_serving()
        # BN(u + t) = s u + shift + s t: the scale goes into both halves of the first layer
        scale, shift = bn_affine(self.bn)
        with torch.no_grad():
            self.item_hidden_table = _freeze(self.item_proj(table) * scale)
            proj = nn.Linear(self.user_proj.in_features, self.user_proj.out_features)
            proj.weight.copy_(self.user_proj.weight * scale[:, None])
            proj.bias.copy_(self.user_proj.bias * scale + shift)
            if self.virtual_proj is not None:
                virtual = nn.Linear(self.virtual_proj.in_features, self.virtual_proj.out_features, bias=False)
                virtual.weight.copy_(self.virtual_proj.weight * scale[:, None])
                self.virtual_proj = virtual
        self.user_proj = proj
        self.bn = nn.Identity()  # type: ignore[assignment]
        self.top = fold_mlp(self.top)

    def item_vectors(self) -> Tensor:
        """The item's half of the first layer (BN scale folded in), (I+1, H0): the score is
        head(user part + this) + the item's bias and prior."""
        assert self.item_hidden_table is not None, "freeze_for_serving first"
        return self.item_hidden_table

    def _item_hidden(self, items: Tensor) -> Tensor:
        if self.item_hidden_table is not None:
            return self.item_hidden_table[items]
        return self.item_proj(self.drop(self.emb.items(items)))  # (N, H0)

    def behavior_target(self, behavior: Tensor) -> tuple[Tensor, Tensor]:
        seq = self.emb.items(behavior)  # (U, L, d)
        pooled = self.pool(seq, behavior > 0)  # (U, d)
        return pooled[:, None, :], (behavior > 0).any(1, keepdim=True)

    def forward(self, user: UserInputs, items: Tensor, owner: Tensor | None = None) -> Tensor:
        z_a, z_c = self._groups(user)
        real, _ = self.behavior_target(user.behavior)
        real_part, virtual_part = (1 - user.gate) * real[:, 0], user.gate * user.virtual[:, 0]  # (U, d)
        if self.virtual_proj is not None:
            z = torch.cat([z_a, real_part, z_c], -1)
            return self._head(user, z, items, owner, virtual_part)
        return self._head(user, torch.cat([z_a, real_part + virtual_part, z_c], -1), items, owner)

    def forward_no_history(self, user: UserInputs, items: Tensor) -> Tensor:
        z_a, z_c = self._groups(user)
        # no behavior pools to zeros (every slot masked), so only the gated virtual behavior is left
        virtual_part = user.gate * user.virtual[:, 0]  # (U, d)
        if self.virtual_proj is not None:
            z = torch.cat([z_a, torch.zeros_like(virtual_part), z_c], -1)
            return self._head(user, z, items, None, virtual_part)
        return self._head(user, torch.cat([z_a, virtual_part, z_c], -1), items, None)

    def _head(
        self, user: UserInputs, z: Tensor, items: Tensor, owner: Tensor | None, virtual: Tensor | None = None
    ) -> Tensor:
        """Logits (N,) from the user's pooled groups `z` (U, 3d) and, with `virtual_proj`, the
        gated virtual behavior `virtual` (U, d), as `forward` says."""
        u = self.user_proj(self.drop(z))  # (U, H0)
        if virtual is not None and self.virtual_proj is not None:
            u = u + self.virtual_proj(self.drop(virtual))
        if owner is not None:
            u = u[owner]  # (N, H0)
        h = F.leaky_relu(self.bn(u + self._item_hidden(items)))  # (N, H0)
        return self.out(self.top(h)).squeeze(-1) + self._bias(items, user.attrs, owner)


class TargetAttention(nn.Module):
    """DIN's activation unit: MLP([e, t, e - t, e * t]) -> a weight per behavior item e for the
    target t, softmax over the valid items, the weighted sum. Its first layer is split by term,
    W [e, t, e-t, e*t] = (W1 + W3) e + (W2 - W3) t + W4 (e*t), so e and t project once."""

    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.key = nn.Linear(d, h)
        self.query = nn.Linear(d, h, bias=False)
        self.prod = nn.Linear(d, h, bias=False)
        self.out = nn.Sequential(nn.LeakyReLU(), nn.Linear(h, 1))
        self.query_table: Tensor | None = None  # (I+1, h) once frozen for serving

    def freeze_for_serving(self, item_table: Tensor) -> None:
        with torch.no_grad():
            self.query_table = _freeze(self.query(item_table))

    def project(self, items: Tensor, z_t: Tensor) -> Tensor:
        """The target's term, (N, h): once per candidate, shared by every behavior item."""
        return self.query_table[items] if self.query_table is not None else self.query(z_t)

    def forward(self, seq: Tensor, mask: Tensor, target: Tensor, query: Tensor) -> Tensor:
        # seq (U, S, d), mask (U, S), target (N, d), query = project(target) (N, h) -> (N, d)
        logits = self.key(seq) + query[:, None, :]  # (N, S, h)
        logits = logits + self.prod(seq * target[:, None, :])
        logits = self.out(logits).squeeze(-1)  # (N, S)
        alpha = torch.softmax(logits.masked_fill(~mask, NEG), -1) * mask  # (N, S)
        return torch.einsum("ns,nsd->nd", alpha, seq.expand(alpha.shape[0], -1, -1))


class DINRanker(Ranker):
    """DIN-style tower: target attention over the behavior sequence (and the virtual items)."""

    default_slots = 4

    def __init__(self, cfg: RankerConfig, emb: FeatureEmbeddings) -> None:
        super().__init__(cfg, emb)
        d, h = emb.d, cfg.d_attention
        self.attention = TargetAttention(d, h)
        self.head = mlp([4 * d, *cfg.hidden], cfg.dropout)
        self.out = nn.Linear(cfg.hidden[-1], 1)
        # created last, so a tower without it is initialised exactly as before it existed
        self.virtual_unit = TargetAttention(d, h) if cfg.virtual_attention != "shared" else None
        self.detach_virtual_target = cfg.virtual_attention == "own-detached"

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # run directories written before the activation unit was a module of its own name its
        # layers att_key, att_query, att_prod, att_out: the same weights under other names
        for name in ("key", "query", "prod", "out"):
            old = f"{prefix}att_{name}."
            for key in [k for k in state_dict if k.startswith(old)]:
                state_dict[f"{prefix}attention.{name}.{key[len(old) :]}"] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def freeze_for_serving(self) -> None:
        table = self.emb.freeze_for_serving()
        self.attention.freeze_for_serving(table)
        if self.virtual_unit is not None:
            self.virtual_unit.freeze_for_serving(table)
        self.head = fold_mlp(self.head)

    def behavior_target(self, behavior: Tensor) -> tuple[Tensor, Tensor]:
        k = self.virtual_slots
        recent = behavior[:, :k]  # the K most recent items, the code's reading of Eq. 8
        return self.emb.items(recent), recent > 0

    def forward(self, user: UserInputs, items: Tensor, owner: Tensor | None = None) -> Tensor:
        z_a, z_c = self._groups(user)
        z_t = self.emb.items(items)  # (N, d)
        seq, mask = self.emb.items(user.behavior), user.behavior > 0  # (U, L, d), (U, L)
        virtual, gate = user.virtual, user.gate
        if owner is not None:
            z_a, z_c, seq, mask = z_a[owner], z_c[owner], seq[owner], mask[owner]
            virtual, gate = virtual[owner], gate[owner]
        query = self.attention.project(items, z_t)  # (N, h)
        real = self.attention(seq, mask, z_t, query)
        virtual_mask = torch.ones_like(virtual[..., 0], dtype=torch.bool)  # (U, K)
        if self.virtual_unit is None:
            read = self.attention(virtual, virtual_mask, z_t, query)
        else:
            t = z_t.detach() if self.detach_virtual_target else z_t
            read = self.virtual_unit(virtual, virtual_mask, t, self.virtual_unit.project(items, t))
        z_v = (1 - gate) * real + gate * read  # (N, d)
        n = z_t.shape[0]
        z = torch.cat([z_a.expand(n, -1), z_v, z_c.expand(n, -1), z_t], -1)  # (N, 4d)
        return self.out(self.head(z)).squeeze(-1) + self._bias(items, user.attrs, owner)


RANKERS: dict[str, type[Ranker]] = {"base": BaseDNN, "din": DINRanker}


# --- zero-shot tower ----------------------------------------------------------------------------


class ResidualMLP(nn.Module):
    """Eq. 15-16: three dense layers, the input concatenated back before layers 2 and 3."""

    def __init__(self, d_in: int, width: int, d_out: int, dropout: float, out_act: bool) -> None:
        super().__init__()
        self.l1 = nn.Linear(d_in, width)
        self.l2 = nn.Linear(width + d_in, width // 2)
        self.l3 = nn.Linear(width // 2 + d_in, d_out)
        self.drop = nn.Dropout(dropout)
        self.out_act = out_act

    def forward(self, x: Tensor) -> Tensor:
        z1 = F.leaky_relu(self.l1(self.drop(x)))
        z2 = F.leaky_relu(self.l2(self.drop(torch.cat([z1, x], -1))))
        y = self.l3(torch.cat([z2, x], -1))
        return F.leaky_relu(y) if self.out_act else y  # encoders: LeakyReLU; decoders: linear


class ZstLosses(NamedTuple):
    l_a: Tensor  # Eq. 3, reconstruction from the attribute code p
    l_v: Tensor  # Eq. 4, reconstruction from the behavior code q
    l_d: Tensor  # Eq. 5-6, alignment of p and q

    def total(self, cfg: ZeroShotConfig) -> Tensor:
        return cfg.w_a * self.l_a + cfg.w_v * self.l_v + cfg.w_d * self.l_d


def gaussian_mmd(p: Tensor, q: Tensor, sigma: float) -> Tensor:
    """Biased MMD^2 estimate with k(x, y) = exp(-|x - y|^2 / 2 sigma^2) (1/n^2 on every term)."""

    def k(x: Tensor, y: Tensor) -> Tensor:
        return torch.exp(-torch.cdist(x, y).pow(2) / (2 * sigma**2)).mean()

    return k(p, p) + k(q, q) - 2 * k(p, q)


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    # pred, target (B, S, d); mask (B, S): mean squared error over valid slots
    err = (pred - target).pow(2).sum(-1) * mask
    return err.sum() / (mask.sum().clamp(min=1) * pred.shape[-1])


class ZeroShotTower(nn.Module):
    """Maps user attributes to virtual behavior; knows shapes only, never a ranking tower.

    Its inputs are embeddings the ranking tower owns; callers pass them detached, so the ZST loss
    never updates them (the paper's two optimizers).
    """

    def __init__(self, cfg: ZeroShotConfig, attr_slots: int, behavior_slots: int, d: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.attr_slots, self.behavior_slots, self.d = attr_slots, behavior_slots, d
        if cfg.variant == "none":  # MAIL-None ablation: a linear map, trained through L_rt only
            self.linear = nn.Linear(attr_slots * d, behavior_slots * d)
            return
        w, h, p = cfg.width, cfg.d_hidden, cfg.dropout
        self.attr_pool = AttentionPool(d, cfg.d_attention)
        self.behavior_pool = AttentionPool(d, cfg.d_attention)
        self.enc_a = ResidualMLP(d, w, h, p, out_act=True)  # E1
        self.enc_v = ResidualMLP(d, w, h, p, out_act=True)  # E2
        self.dec_a = ResidualMLP(h, w, attr_slots * d, p, out_act=False)  # D1
        self.dec_v = ResidualMLP(h, w, behavior_slots * d, p, out_act=False)  # D2

    def virtual_behavior(self, attrs: Tensor, mask: Tensor) -> Tensor:
        # attrs (B, A, d), mask (B, A) -> virtual behavior (B, K, d) = D2(E1(h^a))
        b = attrs.shape[0]
        if self.cfg.variant == "none":
            return self.linear((attrs * mask[..., None]).reshape(b, -1)).reshape(b, -1, self.d)
        p = self.enc_a(self.attr_pool(attrs, mask))
        return self.dec_v(p).reshape(b, self.behavior_slots, self.d)

    def losses(self, attrs: Tensor, attr_mask: Tensor, behavior: Tensor, beh_mask: Tensor) -> ZstLosses:
        # attrs (B, A, d); behavior (B, K, d): both targets, detached by the caller
        if self.cfg.variant == "none":
            zero = attrs.new_zeros(())
            return ZstLosses(zero, zero, zero)
        b = attrs.shape[0]
        p = self.enc_a(self.attr_pool(attrs, attr_mask))  # (B, h)
        q = self.enc_v(self.behavior_pool(behavior, beh_mask))  # (B, h)

        def rec_a(code: Tensor) -> Tensor:
            return masked_mse(self.dec_a(code).reshape(b, -1, self.d), attrs, attr_mask)

        def rec_v(code: Tensor) -> Tensor:
            return masked_mse(self.dec_v(code).reshape(b, -1, self.d), behavior, beh_mask)

        if self.cfg.cross:
            l_a, l_v = rec_a(p) + rec_v(p), rec_a(q) + rec_v(q)
        else:  # MAIL-Single style: each code reconstructs its own modality only
            l_a, l_v = rec_a(p), rec_v(q)
        if self.cfg.align == "mmd":
            l_d = gaussian_mmd(p, q, self.cfg.mmd_sigma)
        elif self.cfg.align == "mse":
            l_d = (p - q).pow(2).mean()
        elif self.cfg.align == "off":
            l_d = p.new_zeros(())
        else:
            raise ValueError(f"unknown alignment {self.cfg.align!r}")
        return ZstLosses(l_a, l_v, l_d)


def zst_step_losses(
    model: MailModel, attrs: Tensor, behavior: Tensor, is_new: Tensor, keep: Tensor | None = None
) -> ZstLosses | None:
    """A training step's L_a, L_v, L_d: on old users with real behavior (among `keep` rows), the
    tower's inputs and targets detached from the ranker (its own optimizer steps on them)."""
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


# --- the whole model ----------------------------------------------------------------------------


@dataclass
class ModelConfig:
    model: str = "mail"  # "mail" | "control" | "oracle"
    ranker: RankerConfig | None = None
    zero_shot: ZeroShotConfig | None = None
    fill_train: bool = True  # new users get virtual behavior in training too (paper's reading)
    fill: str = "hard"  # at inference: "hard" switch on empty behavior | "blend" | "off"
    blend_tau: float = 3.0  # blend: gate = tau / (tau + n_history)
    # whether the zero-shot tower (or a generator in its place) reads the user id among the
    # attributes; a new user's id is always out of vocabulary, so by default it reads only what a
    # new user has (checkpoints from before this setting read it)
    zst_user_id: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        ranker = d.get("ranker")
        zst = d.get("zero_shot")
        return cls(
            model=d["model"],
            ranker=RankerConfig(**{**ranker, "hidden": tuple(ranker["hidden"])}) if ranker else None,
            zero_shot=ZeroShotConfig(**zst) if zst else None,
            fill_train=d.get("fill_train", True),
            fill=d.get("fill", "hard"),
            blend_tau=d.get("blend_tau", 3.0),
            zst_user_id=d.get("zst_user_id", True),
        )


def segment_slots(schema: Schema, field: str) -> tuple[slice, int]:
    """Slots and vocabulary size of the user attribute `field` (a prior's segment: one value, or
    a bag of values whose lists are averaged); never the user id."""
    if field == "user_id":
        raise ValueError("a prior's segment is a user attribute other than the user id")
    return user_field_slots(schema, field), next(f.cardinality for f in schema.user_fields if f.name == field)


class MailModel(nn.Module):
    """Shared embeddings + a ranking tower + (for `mail`) a zero-shot tower."""

    def __init__(self, cfg: ModelConfig, schema: Schema, catalog_features: Tensor) -> None:
        super().__init__()
        self.cfg = cfg
        rcfg = cfg.ranker or RankerConfig()
        self.emb = FeatureEmbeddings(schema, catalog_features)
        self.ranker = RANKERS[rcfg.kind](rcfg, self.emb)
        if rcfg.item_prior and (rcfg.prior_segment or rcfg.prior_answer):
            overall = (slice(0, 0), 1)  # no segment: the overall list's one row
            layout = [segment_slots(schema, rcfg.prior_segment) if rcfg.prior_segment else overall]
            if rcfg.prior_answer:
                layout.append(segment_slots(schema, rcfg.prior_answer))
            self.ranker.segment_prior(layout)
        if schema.virtual_slots != self.ranker.virtual_slots:
            raise ValueError(
                f"schema has {schema.virtual_slots} virtual slots, ranker wants {self.ranker.virtual_slots}"
            )
        keep = torch.ones(1, schema.user_slots, dtype=torch.long)
        if not cfg.zst_user_id and any(f.name == "user_id" for f in schema.user_fields):
            keep[0, user_id_slot(schema)] = 0
        self.zst_keep: Tensor
        self.register_buffer("zst_keep", keep, persistent=False)
        self.zst: ZeroShotTower | None = None
        if cfg.model == "mail":
            self.zst = ZeroShotTower(
                cfg.zero_shot or ZeroShotConfig(),
                schema.user_slots,
                self.ranker.virtual_slots,
                schema.d_embed,
            )

    @property
    def virtual_slots(self) -> int:
        return self.ranker.virtual_slots

    def zst_fields(self, attrs: Tensor) -> tuple[Tensor, Tensor]:
        """(B, A) attribute ids -> the user fields the zero-shot tower reads (embeddings, mask):
        without the user id (set to PAD: no embedding, masked) unless `cfg.zst_user_id`."""
        return self.emb.user_fields(attrs * self.zst_keep)

    def virtual_behavior(self, attrs: Tensor) -> Tensor:
        """(B, A) attribute ids -> (B, K, d); zeros without a zero-shot tower."""
        b = attrs.shape[0]
        if self.zst is None:
            return torch.zeros(b, self.virtual_slots, self.emb.d)
        emb, mask = self.zst_fields(attrs)
        return self.zst.virtual_behavior(emb, mask)

    def ranker_parameters(self) -> list[nn.Parameter]:
        zst = {id(p) for p in self.zst.parameters()} if self.zst is not None else set()
        return [p for p in self.parameters() if id(p) not in zst]
