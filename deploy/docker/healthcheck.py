"""Docker HEALTHCHECK: exit 0 when GET /health/ready answers 200, 1 otherwise.

Standard library only, so the runtime image needs no curl or wget. It asks the port the server was told to
use (``CXR_PORT``) on the loopback interface, whatever ``CXR_HOST`` says.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("CXR_PORT", "8000")
    url = f"http://127.0.0.1:{port}/health/ready"
    try:
        with urllib.request.urlopen(url, timeout=float(os.environ.get("CXR_HEALTHCHECK_TIMEOUT", "4"))) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"not ready: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
