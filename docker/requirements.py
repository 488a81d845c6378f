"""Print the serving dependencies of pyproject.toml, one per line, for `pip install -r`.

The images install exactly what pyproject.toml lists for serving (never the `train` extra, so
never torch) plus one ONNX Runtime extra: `--extra cpu` (onnxruntime) or `--extra gpu`
(onnxruntime-gpu; the two provide the same module, so an image has one). `--replace
onnxruntime-gpu=onnxruntime-gpu>=1.27` swaps one requirement for another (the CUDA image pins the
builds for its CUDA).

    python docker/requirements.py [--pyproject pyproject.toml] [--extra NAME] [--replace NAME=REQUIREMENT]
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path


def requirement_name(requirement: str) -> str:
    """The normalized project name of a requirement string (PEP 503)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def serving_requirements(
    pyproject: Path, replace: dict[str, str] | None = None, extras: list[str] | None = None
) -> list[str]:
    """`[project].dependencies` and those of `extras`, with each requirement named in `replace` swapped."""
    project = tomllib.loads(pyproject.read_text())["project"]
    dependencies: list[str] = list(project["dependencies"])
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    for extra in extras or []:
        if extra not in optional:
            raise ValueError(f"--extra {extra}: {pyproject} has extras {sorted(optional)}")
        dependencies += optional[extra]
    swaps = {requirement_name(name): new for name, new in (replace or {}).items()}
    unknown = set(swaps) - {requirement_name(d) for d in dependencies}
    if unknown:
        raise ValueError(f"--replace names {sorted(unknown)}, not dependencies of {pyproject}")
    return [swaps.get(requirement_name(d), d) for d in dependencies]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    parser.add_argument("--extra", action="append", default=[], metavar="NAME")
    parser.add_argument("--replace", action="append", default=[], metavar="NAME=REQUIREMENT")
    args = parser.parse_args(argv)
    replace = dict(item.split("=", 1) for item in args.replace)
    try:
        requirements = serving_requirements(args.pyproject, replace, args.extra)
    except ValueError as exc:
        parser.error(str(exc))
    sys.stdout.write("".join(f"{r}\n" for r in requirements))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
