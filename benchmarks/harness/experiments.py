"""Experiments files (the service's MAILREC_EXPERIMENTS TOML) for a harnessed service."""

from __future__ import annotations

from pathlib import Path

import tomli_w


def write_experiment(
    path: Path,
    bundles: dict[str, Path],
    weights: dict[str, float] | None = None,
    name: str = "cold-start",
    salt: str = "test",
    kinds: dict[str, str] | None = None,
) -> Path:
    """One experiment over `bundles` (variant -> bundle), weight 50 and kind "model" unless given."""
    variants = [
        {
            "name": variant,
            "weight": (weights or {}).get(variant, 50),
            "bundle": str(bundle),
            "kind": (kinds or {}).get(variant, "model"),
        }
        for variant, bundle in bundles.items()
    ]
    path.write_text(tomli_w.dumps({"experiment": {"name": name, "salt": salt, "variants": variants}}))
    return path
