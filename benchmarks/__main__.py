"""``python -m benchmarks``: the executor benchmark (benchmarks/executor.py)."""

import sys

from .executor import main

sys.exit(main())
