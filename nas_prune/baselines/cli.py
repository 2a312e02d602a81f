"""``python -m nas_prune.baselines METHOD --budget-flops F``: the flags are :class:`BaselineConfig`'s fields."""

from __future__ import annotations

from collections.abc import Sequence

from ..cli import ArgumentParser, config_flags, given_flags, warnings_as_lines
from .config import METHODS, BaselineConfig
from .runner import run_baseline

__all__ = ["main"]


def _parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m nas_prune.baselines",
        description="Prune with a method of the literature to a FLOPs budget, fine-tune and report "
        "(metrics.json, model.pt) in results/baselines/<method>-<model>-<dataset>-flops<F>-seed<S>/.",
    )
    parser.add_argument("method", choices=METHODS, metavar="METHOD", help=f"one of {', '.join(METHODS)}")
    config_flags(parser, BaselineConfig)
    parser.add_argument(
        "--force", action="store_true", help="start over: delete the output folder's results and checkpoints"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m nas_prune.baselines METHOD --budget-flops F``; rerun it to continue an interrupted run."""
    args = _parser().parse_args(argv)
    with warnings_as_lines():
        run_baseline(BaselineConfig(**given_flags(args, BaselineConfig)), force=args.force)
