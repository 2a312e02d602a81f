"""``python -m nas_prune.retrain RUN_DIR``."""

import sys

from nas_prune.cli import run_cli
from nas_prune.retrain.cli import main

sys.exit(run_cli(main))
