"""``python -m runq.cli``: the ``runq`` command (tests, benchmarks and the supervisor start it this way)."""

from __future__ import annotations

import sys

from . import main

sys.exit(main())
