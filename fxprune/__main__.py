"""``python -m fxprune`` runs the CLI, as the ``fxprune`` console script does."""

import sys

from .cli import main

sys.exit(main())
