"""The cold-start methods of the offline benchmark, and the hyperparameter each one tunes.

Every method is built on the same ranking tower (`RankerConfig`) and trained by the same loop
with the same `TrainConfig`. Each tuned method tries exactly `len(values)` configurations of its
knob on the validation slice (the same number for every method); `oracle` and `mail-blend` tune
nothing (the ceiling, and MAIL's chosen configuration with the count-based blend).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from model_export import baselines
from model_export.model import ModelConfig, RankerConfig, ZeroShotConfig
from model_export.train import TrainHooks

Value = float | bool | None


@dataclass(frozen=True)
class Built:
    """What a method needs to train: its model configuration, hooks, and TrainConfig overrides."""

    model: ModelConfig
    hooks: TrainHooks | None = None
    train: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    name: str
    about: str  # one line for the report
    knob: str | None  # what is tuned on validation
    values: tuple[Value, ...]  # the configurations tried; values[0] is the untuned default
    build: Callable[[RankerConfig, ZeroShotConfig, Value, int], Built]
    tuned_as: str | None = None  # takes the value chosen for that method instead of tuning


def _control(ranker: RankerConfig, zst: ZeroShotConfig, value: Value, seed: int) -> Built:
    return Built(ModelConfig(model="control", ranker=replace(ranker, dropout=float(value or 0))))


def _popularity(ranker: RankerConfig, zst: ZeroShotConfig, value: Value, seed: int) -> Built:
    raise TypeError("popularity trains nothing: the suite scores it from the training counts")


def _oracle(ranker: RankerConfig, zst: ZeroShotConfig, value: Value, seed: int) -> Built:
    return Built(ModelConfig(model="oracle", ranker=ranker))


def _mean_fill(ranker: RankerConfig, zst: ZeroShotConfig, value: Value, seed: int) -> Built:
    return Built(ModelConfig(model="control", ranker=ranker, fill_train=bool(value)), baselines.mean_fill())


def _llae(ranker: RankerConfig, zst: ZeroShotConfig, value: Value, seed: int) -> Built:
    return Built(ModelConfig(model="control", ranker=ranker), baselines.llae(rank_weight=float(value or 0)))


def _dropoutnet(ranker: RankerConfig, zst: ZeroShotConfig, value: Value, seed: int) -> Built:
    return Built(ModelConfig(model="control", ranker=ranker), baselines.DropoutNet(float(value or 0), seed))


def _metaemb(ranker: RankerConfig, zst: ZeroShotConfig, value: Value, seed: int) -> Built:
    hooks = baselines.MetaEmb(alpha=float(value or 0), lr=ZST_LR, seed=seed)
    return Built(ModelConfig(model="control", ranker=ranker), hooks)


def _mail(
    fill: str = "hard", fill_train: bool = True, ranker_change: dict[str, Any] | None = None, **change: Any
) -> Callable[[RankerConfig, ZeroShotConfig, Value, int], Built]:
    def build(ranker: RankerConfig, zst: ZeroShotConfig, value: Value, seed: int) -> Built:
        zero_shot = replace(zst, **change)
        model = ModelConfig(
            model="mail",
            ranker=replace(ranker, **(ranker_change or {})),
            zero_shot=zero_shot,
            fill=fill,
            fill_train=fill_train,
        )
        return Built(model, train={} if value is None else {"lr_zst": float(value)})

    return build


ZST_LR = 5e-4  # TrainConfig.lr_zst: the generators' optimizer (G_A), MetaEmb's too
ZST_LRS = (ZST_LR, 2e-3)

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("control", "the ranking tower alone; cold users get empty behavior", "ranker dropout",
               (0.2, 0.5), _control),
        Method("oracle", "the same tower fed new users' real behavior: the ceiling", None, (None,), _oracle),
        Method("popularity", "the items most liked in training, minus what the user has seen; no model",
               None, (None,), _popularity),
        Method("popularity-segment", "the same within the user's segment of one attribute, shrunk towards "
               "the overall list (attribute and shrinkage chosen on validation); no model",
               None, (None,), _popularity),
        Method("mean-fill", "empty behavior := old users' mean behavior representation", "fill in training",
               (True, False), _mean_fill),
        Method("mean-fill-infer-only", "the same at inference only: any behavior at all, against MAIL's "
               "virtual behavior at inference only", None, (False,), _mean_fill),
        Method("llae", "low-rank linear auto-encoder, attributes -> behavior (Li et al. 2019)",
               "low-rank weight", (3e-4, 3e-3), _llae),
        Method("dropoutnet", "behavior and user id dropped at random in training (Volkovs et al. 2017)",
               "drop rate", (0.5, 0.25), _dropoutnet),
        Method("metaemb", "meta-learned user-id embedding from attributes (Pan et al. 2019)", "alpha",
               (0.1, 0.5), _metaemb),
        Method("mail", "MAIL, Gaussian MMD alignment (the paper)", "ZST lr", ZST_LRS, _mail()),
        Method("mail-mse", "MAIL, paired MSE alignment (the official code)", "ZST lr", ZST_LRS,
               _mail(align="mse")),
        Method("mail-none", "ablation None: a linear attribute -> behavior map, no ZST loss", "ZST lr",
               ZST_LRS, _mail(variant="none")),
        Method("mail-single", "ablation Single: Eq. 3 only (both decoders on the attribute code)",
               "ZST lr", ZST_LRS, _mail(w_v=0.0, w_d=0.0, align="off")),
        Method("mail-dual", "ablation Dual: Eq. 3 + 4, no alignment", "ZST lr", ZST_LRS,
               _mail(w_d=0.0, align="off")),
        Method("mail-blend", "MAIL with the count-based blend gate tau / (tau + n), tau = 3", None,
               (None,), _mail(fill="blend"), tuned_as="mail"),
        Method("mail-infer-only", "MAIL with virtual behavior at inference only (the official code): "
               "no training row with empty behavior gets it (new users' rows on the paper's protocol; "
               "the cold rows and first picks on both)",
               None, (None,), _mail(fill_train=False), tuned_as="mail"),
        Method("mail-own", "MAIL whose virtual behavior is read by weights of its own (BaseDNN: its own "
               "columns of the first layer), so cold rows never train the weights that read real "
               "history; the product's BaseDNN MAIL since 2026-12-04 (train-budget.md)", None, (None,),
               _mail(ranker_change={"virtual_attention": "own"}), tuned_as="mail"),
        Method("mail-own-attention", "MAIL on the DIN tower with a second attention unit for the virtual "
               "items, so cold rows never train the unit that reads real history", None, (None,),
               _mail(ranker_change={"virtual_attention": "own"}), tuned_as="mail"),
        Method("mail-own-attention-detached", "the same, and the virtual items' reading trains no embedding: "
               "cold rows reach the rest of the tower through its head alone", None, (None,),
               _mail(ranker_change={"virtual_attention": "own-detached"}), tuned_as="mail"),
    )
}  # fmt: skip
