"""``python -m evloop``: the ``evloop`` command."""

import sys

from .cli import main

sys.exit(main())
