"""``python -m nas_prune.retrain RUN_DIR``: the flags are :class:`RetrainConfig`'s fields."""

from __future__ import annotations

from collections.abc import Sequence

from ..cli import ArgumentParser, config_flags, given_flags, warnings_as_lines
from ..errors import NasPruneError
from .config import RetrainConfig
from .run import retrain

__all__ = ["main"]


def _parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m nas_prune.retrain",
        description="Retrain an architecture found by a search (from scratch or from the inherited "
        "weights, optionally distilled from the dense model), export it and compare it with the dense "
        "model. Writes RUN_DIR/retrain/<init>[-distill][-budget]-trial<ID>/ (metrics.json, model.pt, "
        "model.onnx) and RUN_DIR/retrain/summary.csv + summary.png. --top K retrains the K best "
        "top-rung architectures as parallel Ray Tune trials (results in RUN_DIR/retrain/tune/) and "
        "picks one by validation score (RUN_DIR/retrain/top.json). Rerun the same command to continue "
        "an interrupted retrain.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a search run directory (results/<run>)")
    config_flags(parser, RetrainConfig)
    parser.add_argument(
        "--output",
        default=None,
        help="write here instead of RUN_DIR/retrain/<init>[-distill][-budget]-trial<ID> (e.g. for "
        "another --seed; only folders directly inside RUN_DIR/retrain/ appear in its summary)",
    )
    parser.add_argument(
        "--task",
        default=None,
        help="pkg.module:factory returning the nas_prune Task to train and score with (default: the run's "
        "--task or --dataset; a task the search got as a Python object needs nas_prune.retrain(..., task=))",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the per-batch progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m nas_prune.retrain RUN_DIR``: retrain, export and report one architecture."""
    args = _parser().parse_args(argv)
    given = given_flags(args, RetrainConfig)
    config = RetrainConfig(**given)
    if not config.distill and {"temperature", "alpha"} & set(given):
        raise NasPruneError("--temperature and --alpha only apply with --distill")
    with warnings_as_lines():
        retrain(args.run_dir, config, output=args.output, task=args.task, progress=not args.no_progress)
