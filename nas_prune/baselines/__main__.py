"""``python -m nas_prune.baselines METHOD --budget-flops F``."""

import sys

from nas_prune.baselines.cli import main
from nas_prune.cli import run_cli

sys.exit(run_cli(main))
