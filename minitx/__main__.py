"""`python -m minitx ...` runs the `minitx` command line (minitx/cli.py), with the same exit status."""

import sys

from minitx.cli import main

sys.exit(main())
