"""The config-driven parser helper: flags typed and documented from dataclass fields."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from nas_prune.cli import ArgumentParser, config_flags, config_from_mapping, given_flags, option
from nas_prune.errors import NasPruneError


@dataclass(frozen=True)
class Example:
    lr: float = option(0.1, "peak learning rate", group="training")
    epochs: float | None = option(None, "epochs (default: the dense model's)")
    seeds: tuple[str, ...] = option(("uniform", "l2"), "seed kinds")
    distill: bool = option(False, "learn from the dense model too")
    progress: bool = option(True, "progress bars")
    init: str = option("scratch", "how to start", choices=["scratch", "inherit"])
    hidden: int = 3


def _parse(argv):
    return given_flags(config_flags(ArgumentParser(prog="t"), Example).parse_args(argv), Example)


def test_only_given_flags_are_returned_typed():
    assert _parse([]) == {}
    got = _parse(["--lr", "0.5", "--seeds", "l2", "--distill", "--no-progress", "--init", "inherit"])
    assert got == {"lr": 0.5, "seeds": ("l2",), "distill": True, "progress": False, "init": "inherit"}
    assert Example(**got).lr == 0.5


def test_help_shows_defaults_from_the_dataclass_and_skips_fields_without_help(capsys):
    with pytest.raises(SystemExit):
        _parse(["--help"])
    out = capsys.readouterr().out
    assert "peak learning rate (default 0.1)" in out
    assert "seed kinds (default uniform l2)" in out
    assert "training:" in out
    assert "--hidden" not in out


def test_bad_values_exit_2(capsys):
    for argv in (["--lr", "x"], ["--init", "warm"], ["--hidden", "1"]):
        with pytest.raises(SystemExit) as err:
            _parse(argv)
        assert err.value.code == 2


def test_config_from_mapping_refuses_unknown_keys_but_drops_retired_ones():
    assert config_from_mapping(Example, {"lr": 0.2, "seeds": ["l2"]}, "x.yaml") == Example(
        lr=0.2, seeds=("l2",)
    )
    assert config_from_mapping(Example, {"extra": {}}, "x.yaml", retired=("extra",)) == Example()
    with pytest.raises(NasPruneError, match="x.yaml: unknown setting"):
        config_from_mapping(Example, {"lrr": 0.2}, "x.yaml")
