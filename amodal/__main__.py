"""``python -m amodal ...`` is the ``amodal`` command."""

import sys

from amodal.cli import main

sys.exit(main())
