"""Domain errors, each with its HTTP status, rendered in one place as {"error", "detail"}.

* ServiceError                 500  (never raised for bad input)
  x BadRequest                 400
    x UnknownVariant           400  an X-Variant that is not allow-listed; lists the valid ones
  x Unauthorized               401  admin endpoint without the right bearer token
  x NotFound                   404
    x UnknownRequest           404  feedback for an impression never served or past its window
  x BodyTimeout                408  a request body slower than MAILREC_BODY_TIMEOUT_S (connection closed)
  x PayloadTooLarge            413
  x Unprocessable              422
    x InvalidInput             422  unknown items or attributes, unreadable values
    x ItemNotServed            422  feedback for an item that was not in that response
    x BadBundle                422  a bundle refused by /admin/reload (the old one keeps serving)
  x Unavailable                503
    x NotReady                 503  bundles not loaded yet
    x FeedbackStoreDown        503  Redis unreachable, so a click cannot be attributed now
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    status = 500
    code = "internal"

    def __init__(self, detail: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(str(detail))
        self.detail = detail
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "detail": self.detail}


class BadRequest(ServiceError):
    status, code = 400, "bad_request"


class UnknownVariant(BadRequest):
    code = "unknown_variant"

    def __init__(self, name: str, valid: list[str]) -> None:
        super().__init__({"message": f"unknown variant {name!r}", "valid": valid})


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class NotFound(ServiceError):
    status, code = 404, "not_found"


class UnknownRequest(NotFound):
    code = "unknown_request"


class BodyTimeout(ServiceError):
    status, code = 408, "body_timeout"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Connection": "close"})


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class Unprocessable(ServiceError):
    status, code = 422, "unprocessable"


class InvalidInput(Unprocessable):
    code = "invalid_input"


class ItemNotServed(Unprocessable):
    code = "item_not_served"


class BadBundle(Unprocessable):
    code = "bad_bundle"


class Unavailable(ServiceError):
    status, code = 503, "unavailable"


class NotReady(Unavailable):
    code = "not_ready"


class FeedbackStoreDown(Unavailable):
    code = "feedback_store_down"
