"""``python -m nas_prune.search``: the search's command line (see :mod:`nas_prune.search.cli`)."""

import sys

from ..cli import run_cli
from .cli import main

sys.exit(run_cli(main))
