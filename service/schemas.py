"""Request and response bodies. Strict: unknown fields, NaN and infinities are refused (422), and
so are ids over their length or with control characters (they become Redis keys)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Id = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@\-]+$")]
# what `secrets.token_urlsafe` writes; any other string is not one of ours
ImpressionId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")]
# any printable text (catalogs use their own ids), but no control characters: ids become Redis keys
ItemId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f-\x9f]+$")]
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
    request_id: str = Field(description="Correlation id: the request's X-Request-Id, or one made up.")
    impression_id: str | None = Field(
        description="The id POST /feedback credits a click to: issued by the service, unguessable, "
        "never reused. null when the impression could not be recorded (Redis down or slow): no "
        "click on it can be counted."
    )
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
    impression_id: ImpressionId = Field(description="`impression_id` of the /recommend response.")
    item_id: ItemId = Field(description="An item of that response.")
    event: Literal["click"]


class FeedbackResponse(BaseModel):
    status: Literal["counted", "duplicate"]
    impression_id: str
    item_id: str
    variant: str
    model_version: str


class FieldProblem(BaseModel):
    field: str = Field(description="Where in the request, e.g. body.user_id.")
    message: str
    type: str | None = Field(None, description="pydantic's error type, for `validation` errors.")


class ErrorResponse(BaseModel):
    """Every error the service answers, whatever its status: one shape (`service.errors`)."""

    error: str = Field(description="What went wrong, a stable code: validation, unknown_variant, ...")
    detail: str | list[FieldProblem] | dict[str, Any] = Field(
        description="For people: a message; for `validation` and request limits one entry per field; "
        "for some codes an object (unknown_variant: message and the valid variants)."
    )


class ReadyResponse(BaseModel):
    status: Literal["ready", "loading"]
    variants: dict[str, dict[str, str]] = Field(description="Each variant's model version and provider.")
    redis: Literal["up", "down"]
    redis_embedded: bool


class ReloadRequest(Strict):
    variant: Id
    bundle: str | None = Field(None, description="Bundle directory; default: the variant's own.")
