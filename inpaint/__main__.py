"""``python -m inpaint``: see ``inpaint.cli``."""

import sys

from inpaint.cli import main

sys.exit(main())
