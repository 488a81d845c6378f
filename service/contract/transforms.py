"""Raw values -> tokens: the transforms a `FieldSpec` names (text, age groups, zip regions, ...).

Each transform turns one raw value into zero or more tokens; no token means the value is missing
(PAD). A value that cannot be read at all (an age that is not a number) raises `BadValue`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

from service.contract.errors import BadValue

AGE_EDGES = (18, 25, 35, 45, 50, 56)  # MovieLens-1M's age groups, applied to raw ages


def _text(value: object) -> list[str]:
    token = str(value).strip().lower()
    return [token] if token else []


def _number(name: str, value: object) -> float:
    if isinstance(value, bool):
        raise BadValue(name, value, "a number")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise BadValue(name, value, "a number") from None
    if not math.isfinite(number):
        raise BadValue(name, value, "a finite number")
    return number


def _age_bucket(value: object) -> list[str]:
    age = _number("age", value)
    if age <= 0:
        return []  # Book-Crossing and MovieLens use 0 for "unknown"
    for lo, hi in zip((0, *AGE_EDGES), AGE_EDGES, strict=False):
        if age < hi:
            return [f"{lo}-{hi - 1}"]
    return [f"{AGE_EDGES[-1]}+"]


def _zip_region(value: object) -> list[str]:
    text = str(value).strip()
    if not text:
        return []
    return [text[0]] if text[0].isdigit() else ["non-us"]


def _location_parts(value: object) -> list[str]:
    return [p.strip().lower() for p in str(value).split(",")]


def _country(value: object) -> list[str]:
    country = _location_parts(value)[-1]
    return [country] if country and country != "n/a" else []


def _region(value: object) -> list[str]:
    parts = _location_parts(value)
    if len(parts) < 2 or not parts[-2] or not parts[-1] or parts[-2] == "n/a":
        return []
    return [f"{parts[-2]}, {parts[-1]}"]


def _decade(value: object) -> list[str]:
    try:
        year = int(_number("year", value))
    except BadValue:
        return []
    return [f"{year // 10 * 10}s"] if 1000 <= year <= 2100 else []


def _utc(value: object) -> time.struct_time:
    seconds = _number("timestamp", value)
    if not 0 <= seconds < 2**40:
        raise BadValue("timestamp", value, "unix seconds")
    return time.gmtime(seconds)


def _hour(value: object) -> list[str]:
    return [str(_utc(value).tm_hour)]


def _weekday(value: object) -> list[str]:
    return [str(_utc(value).tm_wday)]


def _tags(value: object) -> list[str]:
    if isinstance(value, str):
        value = value.split("|")
    if not isinstance(value, Iterable):
        raise BadValue("tags", value, "a list of strings")
    return [t for v in value for t in _text(v)]


TRANSFORMS: dict[str, Callable[[object], list[str]]] = {
    "text": _text,
    "age_bucket": _age_bucket,
    "zip_region": _zip_region,
    "country": _country,
    "region": _region,
    "decade": _decade,
    "hour": _hour,
    "weekday": _weekday,
    "tags": _tags,
}
