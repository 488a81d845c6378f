"""Container healthcheck: exit 0 when the service on this host answers GET /readyz with 200.

Standard library only (the slim image has no curl). The port is MAILREC_PORT, as the service
binds it; any error, timeout or non-200 status (503 while bundles load) exits 1.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    url = f"http://127.0.0.1:{os.environ.get('MAILREC_PORT', '8000')}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        sys.stderr.write(f"{url}: {exc}\n")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
