"""``python -m edgenas.agent serve ...``: the agent without the edgenas CLI (no torch imported)."""

from __future__ import annotations

import sys

from edgenas.agent.server import main

if __name__ == "__main__":
    sys.exit(main())
