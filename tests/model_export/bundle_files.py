"""Editing a copy of a bundle's files, for the tests that check what load refuses."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.contract import MANIFEST


def copy_bundle(bundle: Path, tmp_path: Path) -> Path:
    out = tmp_path / "bundle"
    shutil.copytree(bundle, out)
    return out


def rewrite_manifest(root: Path, change: Callable[[dict[str, Any]], None]) -> None:
    raw = json.loads((root / MANIFEST).read_text())
    change(raw)
    (root / MANIFEST).write_text(json.dumps(raw))
