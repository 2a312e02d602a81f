"""Optuna studies: one per cost level, each learning keep scores from rung-0 accuracy only.

Why one study per level: candidates at one level cost the same (the projection puts them there), so a
single objective, rung-0 validation accuracy, is comparable between them; scores of different levels
or of fine-tuned rungs never mix in one study: a sampler is told only scores it can compare.
The studies live in ``study.db`` (``optuna-dashboard sqlite:///<run>/study.db`` shows them).

Decisions:

* ``--sampler evolution`` is the default (issue 24): children of each level's best rung-0 candidates
  (:mod:`.evolution`), as OFA and SPOS search under a budget. It works on the projected grid itself,
  so its proposals are new architectures near the good ones; TPE models keep scores, and most of its
  proposals projected onto architectures already evaluated (``scripts/benchmark_sampler.py`` and
  results/BENCHMARKS.md, "Sampler: model share and repeats", have the numbers).
* ``--sampler tpe`` stays selectable: multivariate (groups interact through the budget) with the
  constant liar (a batch is asked before any of it is scored); its raw ask is failed (``raw``) and the
  study records the *projected* keep scores instead, so the model learns what was evaluated.
  ``--sampler random`` (uniform keep scores, projected the same way) is the control.
* Every study records each candidate's projected keep scores and its rung-0 score; seeds are added to
  the budget level's study as finished trials. Evolution's population is rebuilt from the journal, so
  a resumed run breeds from everything evaluated before the kill.
* A proposal that projects onto an architecture already proposed is tried again and keeps its source,
  since it derives from the model's proposal; the tries are counted in the journal's ``retries``:
  - evolution breeds again, up to :data:`MAX_RETRIES` times, with a mutation that grows every
    :data:`_TRIES_PER_STRENGTH` tries (a converged population's one-step mutations mostly project back
    onto their parents: on convnet's small grid a third of the children repeated);
  - then any sampler's proposal walks over grid neighbours (one group a step up, another a step down,
    up to :data:`MAX_RETRIES` steps) that stay under the budget and inside ``--budget-band`` under it.
  Only when both fail is it failed as a repeat (:meth:`Proposals.drop`) and the next proposal a uniform
  draw. The random control never moves: its repeats are measured as they are.
* After a kill, trials still RUNNING either have a rung-0 score in the journal (told now) or were never
  scored (failed; their candidate was never recorded, so nothing is lost or repeated).
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from ..errors import NasPruneError
from ..space import WidthSpace
from .evolution import MIN_PARENTS, breed, neighbour
from .projection import KEEP_MIN, arch_key, scores_of

__all__ = ["MAX_RETRIES", "Proposal", "Proposals", "repeated_proposals"]

MAX_RETRIES = 20
"""New children bred, then grid neighbours tried, for a proposal that repeats an architecture before it
counts as a repeat."""
_TRIES_PER_STRENGTH = 2
"""Children bred per mutation strength: try 1 mutates up to 1 grid step, 2-3 up to 2, 4-5 up to 3, ..."""

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # multivariate TPE


def _sampler(name: str, seed: int, startup: int):
    if name != "tpe":  # evolution and random enqueue every point: the study only records them
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=startup, multivariate=True, constant_liar=True
    )


@dataclass(frozen=True)
class Proposal:
    """A projected proposal: ``widths`` (None: nothing fits the level), who chose it, how many grid
    neighbours were tried because it repeated an architecture, and whether it still ``repeats`` one."""

    widths: dict[str, int] | None
    source: str
    retries: int = 0
    repeats: bool = False


class Proposals:
    """Keep-score proposals per cost level, asked and told by trial id (the journal's ``trial_id``).

    Args:
        run_dir: the run directory (``study.db`` lives there).
        space: the width grid (one keep score per searched group).
        levels: the cost levels, fractions of the budget.
        sampler: ``evolution``, ``tpe`` or ``random``.
        seed: the sampler seed; a resumed study draws a fresh stream (seed + trials so far).
        startup: TPE's random start-up trials per level.
        band: ``--budget-band``: a grid neighbour that replaces a repeat stays within it under the budget.
    """

    def __init__(
        self,
        run_dir: Path,
        space: WidthSpace,
        levels,
        sampler: str,
        seed: int,
        startup: int,
        band: float = 0.02,
    ):
        storage = f"sqlite:///{(run_dir / 'study.db').resolve()}"
        self.space, self.groups = space, space.names
        self.dists = {g: FloatDistribution(KEEP_MIN, 1.0) for g in self.groups}
        self.studies: dict[float, optuna.Study] = {}
        self.pending: dict[int, tuple[float, optuna.Trial]] = {}
        for level in levels:
            study = optuna.create_study(
                study_name=f"level{level:g}", storage=storage, direction="maximize", load_if_exists=True
            )
            if study.trials and set(study.trials[0].distributions) != set(self.dists):
                raise NasPruneError(
                    f"{run_dir / 'study.db'} was made for other channel groups; start a new run"
                )
            study.sampler = _sampler(sampler, seed + len(study.trials) + int(level * 1000), startup)
            self.studies[level] = study
        self.rng = random.Random(seed + sum(len(s.trials) for s in self.studies.values()))
        self.sampler_name, self.startup, self.band = sampler, startup, band

    def propose(self, level: float, trial_id: int, projector, taken, parents, explore=False) -> Proposal:
        """The next candidate at ``level``, asked in its study as ``trial_id`` with the *projected* keep
        scores (so the sampler's model learns the architectures evaluated, not the raw draws).

        Args:
            projector: the :class:`~nas_prune.search.projection.Projector`.
            taken: keys (:func:`arch_key`) of the architectures already proposed.
            parents: cost level -> ``[(rung-0 score, widths)]`` scored so far (evolution's population).
            explore: a uniform draw (the proposal before was a repeat).
        """
        scores, source = self._draw(level, parents, explore)
        widths, retries = projector.project(scores, level), 0
        if self.sampler_name != "random":  # the control's repeats are measured as they are
            while source == "evolution" and _repeats(widths, taken) and retries < MAX_RETRIES:
                retries += 1
                scores, source = self._draw(level, parents, explore, 1 + retries // _TRIES_PER_STRENGTH)
                widths = projector.project(scores, level)
            widths, walked = self._move(widths, level, projector, taken)
            retries += walked
        if widths is not None:
            scores = scores_of(widths, self.space)
        self._ask(level, trial_id, scores)
        return Proposal(widths, source, retries, _repeats(widths, taken))

    def _move(self, widths: dict | None, level: float, projector, taken) -> tuple[dict | None, int]:
        """``widths``, or when it was proposed before, the first new architecture of a walk over grid
        neighbours that stay under the level's budget and within the band under it (or, for a proposal
        below the band, no cheaper than the proposal); not projected again: the projection's fill would
        pull most back onto ``widths``. Returns the widths and the steps taken."""
        if widths is None:
            return None, 0
        floor = min(projector.usage(widths, level), 1.0 - self.band)
        retries = 0
        while arch_key(widths) in taken and retries < MAX_RETRIES:
            retries += 1
            step = neighbour(widths, self.space, self.rng)
            if floor <= projector.usage(step, level) <= 1.0 + 1e-12:
                widths = step
        return widths, retries

    def _draw(self, level: float, parents, explore: bool, strength: int = 1) -> tuple[dict[str, float], str]:
        """Keep scores and who chose them: ``optuna`` (TPE's model), ``evolution`` (children of the
        level's rung-0 population, or the budget level's while the level has fewer than
        :data:`MIN_PARENTS`) or
        ``random`` (a uniform draw: the control, a start-up, or after a repeat)."""
        study = self.studies[level]
        if self.sampler_name == "tpe" and not explore:
            done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
            trial = study.ask(self.dists)
            trial.set_user_attr("raw", True)  # replaced by the projected point (see propose)
            study.tell(trial, state=TrialState.FAIL)
            return dict(trial.params), "optuna" if done >= self.startup else "random"
        if self.sampler_name == "evolution" and not explore:
            population = parents.get(level, [])
            if len(population) < MIN_PARENTS:
                population = parents.get(1.0, [])
            if len(population) >= MIN_PARENTS:
                child = breed(population, self.space, self.rng, strength)
                return scores_of(child, self.space), "evolution"
        return {g: self.rng.uniform(KEEP_MIN, 1.0) for g in self.groups}, "random"

    def _ask(self, level: float, trial_id: int, scores: Mapping[str, float]) -> None:
        study = self.studies[level]
        study.enqueue_trial({g: float(scores[g]) for g in self.groups})
        trial = study.ask(self.dists)
        trial.set_user_attr("trial_id", trial_id)
        self.pending[trial_id] = (level, trial)

    def tell(self, trial_id: int, accuracy: float | None) -> None:
        """The rung-0 accuracy of an asked candidate (None: it failed or was infeasible)."""
        level, trial = self.pending.pop(trial_id)
        study = self.studies[level]
        if accuracy is None:
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, float(accuracy))

    def drop(self, trial_id: int) -> None:
        """An asked proposal that is not evaluated (it repeats a journaled candidate): failed in its study,
        so the sampler's model is unchanged, and without ``trial_id``, which the next candidate takes."""
        level, trial = self.pending.pop(trial_id)
        trial.set_user_attr("trial_id", None)
        trial.set_user_attr("repeat", True)
        self.studies[level].tell(trial, state=TrialState.FAIL)

    def add_seed(self, scores: Mapping[str, float], accuracy: float, source: str, trial_id: int) -> None:
        """A seed's rung-0 score, added to the budget level's study as a finished trial."""
        params = {g: float(min(1.0, max(KEEP_MIN, scores[g]))) for g in self.groups}
        self.studies[1.0].add_trial(
            create_trial(
                params=params,
                distributions=self.dists,
                value=float(accuracy),
                user_attrs={"trial_id": trial_id, "source": source},
            )
        )

    def seeded(self) -> set[int]:
        """Trial ids already in a study (seeds added, candidates told)."""
        ids = set()
        for study in self.studies.values():
            ids |= {t.user_attrs.get("trial_id") for t in study.get_trials(deepcopy=False)}
        return ids - {None}

    def repair(self, rung0: Mapping[int, float | None]) -> int:
        """After a kill: tell RUNNING trials whose candidate has a rung-0 result in ``rung0`` (None =
        failed), fail the others. Returns how many were failed unscored."""
        lost = 0
        for study in self.studies.values():
            for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                trial_id = frozen.user_attrs.get("trial_id")
                accuracy = rung0.get(trial_id)
                if accuracy is None:
                    study.tell(frozen.number, state=TrialState.FAIL)
                    lost += trial_id not in rung0
                else:
                    study.tell(frozen.number, float(accuracy))
        return lost


def _repeats(widths: dict | None, taken) -> bool:
    return widths is not None and arch_key(widths) in taken


def repeated_proposals(run_dir: Path) -> int:
    """How many proposals of the run in ``run_dir`` repeated an architecture already journaled (failed in
    their study with the ``repeat`` mark by :meth:`Proposals.drop`, never evaluated)."""
    path = run_dir / "study.db"
    if not path.is_file():
        return 0
    storage = f"sqlite:///{path.resolve()}"
    total = 0
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        total += sum(bool(t.user_attrs.get("repeat")) for t in failed)
    return total
