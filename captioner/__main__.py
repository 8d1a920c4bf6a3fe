"""`python -m captioner ...` and `torchrun ... -m captioner ...` run the CLI."""
import sys

from .cli import main

sys.exit(main())
