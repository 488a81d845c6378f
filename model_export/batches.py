"""Rows of the encoded data as model inputs: index batches, and the ranker's user inputs.

A row's virtual behavior is filled in by the zero-shot tower when its real history is empty or
short (`service.contract.blend_gate`, the service's rule), in training and in evaluation alike.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from model_export.features import EncodedData
from model_export.model import MailModel, UserInputs
from service.contract import blend_gate


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
