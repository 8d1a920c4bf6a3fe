"""`python -m captioner.cli ...` runs the CLI (as `python -m captioner ...` does)."""
import sys

from . import main

sys.exit(main())
