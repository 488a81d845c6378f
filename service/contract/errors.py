"""The errors of the training/serving contract, all `ContractError`.

* ContractError
  x BundleError       a bundle is missing a file, a checksum or signature disagrees, unknown format
  x UnknownField      a request names an attribute the bundle does not know
  x UnknownItems      item ids that are not in the catalog
  x BadValue          a raw value that cannot be read (for example an age that is not a number)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class ContractError(Exception):
    """A violation of the training/serving contract."""


class BundleError(ContractError):
    """A bundle on disk that must not be served."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"bad bundle {path}: {problem}")
        self.path = str(path)
        self.problem = problem


class UnknownField(ContractError):
    def __init__(self, names: Sequence[str], known: Sequence[str]) -> None:
        super().__init__(f"unknown attribute(s) {sorted(names)}; this model knows {sorted(known)}")
        self.names = sorted(names)
        self.known = sorted(known)


class UnknownItems(ContractError):
    def __init__(self, ids: Sequence[str]) -> None:
        shown = list(ids)[:20]
        more = f" (+{len(ids) - 20} more)" if len(ids) > 20 else ""
        super().__init__(f"unknown item id(s) {shown}{more}")
        self.ids = list(ids)


class BadValue(ContractError):
    def __init__(self, name: str, value: object, expected: str) -> None:
        super().__init__(f"attribute {name!r}: cannot read {value!r}, expected {expected}")
        self.name = name
