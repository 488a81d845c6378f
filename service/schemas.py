"""Request and response bodies. Strict: unknown fields, NaN and infinities are refused (422)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Id = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@\-]+$")]
ItemId = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Text = Annotated[str, StringConstraints(max_length=256)]
AttributeValue = Text | int | float | list[Text] | None

# Hard caps of the schema; the settings (MAILREC_MAX_*) tighten them per deployment.
SCHEMA_MAX_ITEMS = 100_000


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class RecommendRequest(Strict):
    user_id: Id = Field(description="The user's id; unseen ids are cold-start users.")
    attributes: dict[Text, AttributeValue] | None = Field(
        None, max_length=64, description='Raw user attributes, e.g. {"age": 31, "gender": "F"}.'
    )
    history: list[ItemId] | None = Field(
        None, max_length=SCHEMA_MAX_ITEMS, description="Item ids the user interacted with, oldest first."
    )
    candidates: list[ItemId] | None = Field(
        None,
        max_length=SCHEMA_MAX_ITEMS,
        description="Items to rank. Default: the catalog minus items already seen.",
    )
    k: int | None = Field(None, ge=1, description="How many items to return.")
    context: dict[Text, int | float | Text] | None = Field(
        None, max_length=16, description='Raw context, e.g. {"timestamp": 881250949}; default: now.'
    )


class ScoredItem(BaseModel):
    item_id: str
    score: float
    title: str


class RecommendResponse(BaseModel):
    request_id: str
    experiment: str
    variant: str
    model_version: str
    cold_start: bool = Field(description="True when the user had no history at all.")
    virtual_weight: float = Field(
        description="Weight of the virtual behavior in this ranking: 1 = it stood in for the "
        "missing history (MAIL), 0 = not used (warm user, or a variant without a zero-shot tower)."
    )
    items: list[ScoredItem]


class FeedbackRequest(Strict):
    request_id: Id
    item_id: ItemId
    event: Literal["click"]


class FeedbackResponse(BaseModel):
    status: Literal["counted", "duplicate"]
    request_id: str
    item_id: str
    variant: str
    model_version: str


class ReloadRequest(Strict):
    variant: Id
    bundle: str | None = Field(None, description="Bundle directory; default: the variant's own.")
