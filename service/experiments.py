"""A/B assignment: hash(experiment, salt, user id) mod 10,000 against the variant weights.

Sticky by construction: the same user gets the same variant as long as the experiment's name,
salt and weights stay the same. Changing the weights moves users between variants, so treat a
running experiment as immutable and start a new salt for a new split. `X-Variant: NAME` forces an
allow-listed variant (for QA and demos); such traffic is labelled source="override".
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.errors import UnknownVariant

BUCKETS = 10_000


class ExperimentFileError(ValueError):
    """An experiments file that cannot be served."""


KINDS = ("model", "popularity")


@dataclass(frozen=True)
class Variant:
    """A share of users served by a bundle: its ranking model (`model`), or the most popular items
    by the training counts the bundle records (`popularity`: the fallback most engines serve a cold
    user, so an experiment can measure a model against it)."""

    name: str
    weight: float
    bundle: Path
    kind: str = "model"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ExperimentFileError(
                f"variant {self.name!r}: unknown kind {self.kind!r}; choose from {KINDS}"
            )


@dataclass(frozen=True)
class Experiment:
    name: str
    salt: str
    variants: tuple[Variant, ...]
    overridable: frozenset[str]

    def __post_init__(self) -> None:
        names = [v.name for v in self.variants]
        if not names or len(set(names)) != len(names):
            raise ExperimentFileError(f"variants must be non-empty and unique, got {names}")
        if any(v.weight < 0 for v in self.variants) or sum(v.weight for v in self.variants) <= 0:
            raise ExperimentFileError("variant weights must be >= 0 with a positive sum")
        if unknown := self.overridable - set(names):
            raise ExperimentFileError(f"override allow-list names unknown variants {sorted(unknown)}")
        total = sum(v.weight for v in self.variants)
        bounds, running = [], 0.0
        for v in self.variants:
            running += v.weight
            bounds.append(round(running / total * BUCKETS))
        object.__setattr__(self, "_bounds", tuple(bounds))

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.variants]

    def bucket(self, user_id: str) -> int:
        digest = hashlib.sha256(f"{self.name}:{self.salt}:{user_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") % BUCKETS

    def assign(self, user_id: str, override: str | None = None) -> tuple[str, str]:
        """(variant, source): the forced variant if allow-listed, else the user's hash bucket."""
        if override is not None:
            if override not in self.overridable:
                raise UnknownVariant(override, sorted(self.overridable))
            return override, "override"
        bucket = self.bucket(user_id)
        bounds: tuple[int, ...] = self.__dict__["_bounds"]
        for variant, bound in zip(self.variants, bounds, strict=True):
            if bucket < bound:
                return variant.name, "hash"
        return self.variants[-1].name, "hash"


def default_experiment(bundle_dir: Path) -> Experiment:
    """docs/DESIGN.md's default: the ranking tower without the ZST (control) vs MAIL, 50/50."""
    return Experiment(
        name="cold-start",
        salt="2026-11",
        variants=(
            Variant("control", 50, bundle_dir / "control"),
            Variant("mail", 50, bundle_dir / "mail"),
        ),
        overridable=frozenset({"control", "mail"}),
    )


def load_experiment(path: Path) -> Experiment:
    """Read an experiments TOML file; bundle paths are relative to the file's directory."""
    try:
        doc: dict[str, Any] = tomllib.loads(path.read_text())
        exp = doc["experiment"]
        variants = tuple(
            Variant(
                str(v["name"]),
                float(v.get("weight", 1)),
                _resolve(path, str(v["bundle"])),
                str(v.get("kind", "model")),
            )
            for v in exp["variants"]
        )
        overridable = frozenset(exp.get("override", [v.name for v in variants]))
        return Experiment(str(exp["name"]), str(exp.get("salt", "")), variants, overridable)
    except FileNotFoundError:
        raise ExperimentFileError(f"experiments file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ExperimentFileError):
            raise
        raise ExperimentFileError(f"experiments file {path}: {exc!r}") from None


def _resolve(path: Path, bundle: str) -> Path:
    p = Path(bundle).expanduser()
    return p if p.is_absolute() else (path.parent / p).resolve()
