"""``python -m loragraph``: the same as the ``loragraph`` command."""

import sys

from .cli import main

sys.exit(main())
