"""py-spy on the service under load: where one core's time goes, by package and by function."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.serving.loadgen import Load, run_wrk

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]*)(?::\d+)?\)$")


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    return found


def package(file: str) -> str:
    """A frame's file -> the package it belongs to (service modules by name)."""
    if "site-packages/" in file:
        return file.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if "/service/" in file or file.startswith("service/"):
        return "service." + Path(file).stem
    if "/lib/python3" in file:
        rest = file.split("/lib/python3", 1)[1].split("/", 1)[1]
        return "stdlib." + rest.split("/", 1)[0].removesuffix(".py")
    return file or "?"


def parse(raw: str) -> dict[str, Any]:
    by_package: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [FRAME.match(f) for f in stack.split(";")]
        names = [f"{m['func']} ({package(m['file'])})" for m in frames if m]
        if frames and frames[-1]:
            by_package[package(frames[-1]["file"])] += count
        for name in set(names):
            inclusive[name] += count

    def share(c: Counter[str], n: int) -> list[list[Any]]:
        return [[k, round(100 * v / max(total, 1), 1)] for k, v in c.most_common(n)]

    return {
        "samples": total,
        "self_by_package_pct": share(by_package, 15),
        "inclusive_pct": share(inclusive, 80),
    }


def record(
    pid: int, url: str, load: Load, connections: int, seconds: float, work: Path, cpu: str
) -> dict[str, Any]:
    """Sample the service for `seconds` while wrk loads it; py-spy does not pause it (--nonblocking)."""
    raw = work / f"pyspy-{pid}-{time.monotonic_ns()}.txt"
    cmd = [py_spy(), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250"]
    cmd += ["--nonblocking", "--format", "raw", "--output", str(raw)]
    loader = threading.Thread(target=run_wrk, args=(url, load, connections, seconds + 1, work, cpu))
    loader.start()
    subprocess.run(cmd, check=True, capture_output=True)
    loader.join()
    return parse(raw.read_text())


def summary_text(profile: dict[str, Any]) -> str:
    lines = [f"    py-spy: {profile['samples']} samples; self time by package:"]
    lines += [f"      {pct:5.1f}%  {name}" for name, pct in profile["self_by_package_pct"]]
    lines.append("    inclusive, by function:")
    lines += [f"      {pct:5.1f}%  {name}" for name, pct in profile["inclusive_pct"]]
    return "\n".join(lines)


def main() -> int:
    """`python -m benchmarks.serving.profile RAW`: summarize a py-spy raw file."""
    print(summary_text(parse(Path(sys.argv[1]).read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
