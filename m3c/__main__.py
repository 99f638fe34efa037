"""`python -m m3c` runs the command line."""

import sys

from m3c.cli import main

sys.exit(main())
