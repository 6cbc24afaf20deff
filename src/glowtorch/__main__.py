"""``python -m glowtorch`` is the ``glowtorch`` command."""

import sys

from .cli import main

sys.exit(main())
