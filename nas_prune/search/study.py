"""Optuna studies: one per cost level, each learning keep scores from rung-0 accuracy only.

Why one study per level: candidates at one level cost the same (the projection puts them there), so a
single objective, rung-0 validation accuracy, is comparable between them; scores of different levels
or of fine-tuned rungs never mix in one study: a sampler is told only scores it can compare.
The studies live in ``study.db`` (``optuna-dashboard sqlite:///<run>/study.db`` shows them).

Decisions:

* TPE is multivariate (groups interact through the budget) with the constant liar, because a batch of
  proposals is asked before any of them is scored. ``--sampler random`` is the control.
* Seeds are added to the budget level's study as finished trials (their widths as keep scores), so TPE
  starts from the heuristics rather than re-discovering them.
* A proposal that projects onto an architecture already evaluated is failed (:meth:`Proposals.drop`),
  and the next one is a uniform draw (``ask(explore=True)``): told nothing new, TPE repeats itself.
* After a kill, trials still RUNNING either have a rung-0 score in the journal (told now) or were never
  scored (failed; their candidate was never recorded, so nothing is lost or repeated).
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Mapping
from pathlib import Path

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from ..errors import NasPruneError
from .projection import KEEP_MIN

__all__ = ["Proposals", "repeated_proposals"]

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # multivariate TPE


def _sampler(name: str, seed: int, startup: int):
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=startup, multivariate=True, constant_liar=True
    )


class Proposals:
    """Keep-score proposals per cost level, asked and told by trial id (the journal's ``trial_id``).

    Args:
        run_dir: the run directory (``study.db`` lives there).
        groups: the searched group names (one keep score each).
        levels: the cost levels, fractions of the budget.
        sampler: ``tpe`` or ``random``.
        seed: the sampler seed; a resumed study draws a fresh stream (seed + trials so far).
        startup: TPE's random start-up trials per level.
    """

    def __init__(self, run_dir: Path, groups, levels, sampler: str, seed: int, startup: int):
        storage = f"sqlite:///{(run_dir / 'study.db').resolve()}"
        self.groups = list(groups)
        self.space = {g: FloatDistribution(KEEP_MIN, 1.0) for g in self.groups}
        self.studies: dict[float, optuna.Study] = {}
        self.pending: dict[int, tuple[float, optuna.Trial]] = {}
        for level in levels:
            study = optuna.create_study(
                study_name=f"level{level:g}", storage=storage, direction="maximize", load_if_exists=True
            )
            if study.trials and set(study.trials[0].distributions) != set(self.space):
                raise NasPruneError(
                    f"{run_dir / 'study.db'} was made for other channel groups; start a new run"
                )
            study.sampler = _sampler(sampler, seed + len(study.trials) + int(level * 1000), startup)
            self.studies[level] = study
        self.rng = random.Random(seed + sum(len(s.trials) for s in self.studies.values()))
        self.sampler_name, self.startup = sampler, startup

    def ask(self, level: float, trial_id: int, explore: bool = False) -> tuple[dict[str, float], str]:
        """Keep scores for candidate ``trial_id`` at ``level`` and who chose them (``optuna`` when TPE's
        model did, ``random`` in its start-up phase, under ``--sampler random`` or with ``explore``: a
        uniform draw, enqueued in the study, for when the sampler's model keeps proposing what was
        already evaluated)."""
        study = self.studies[level]
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        if explore:
            study.enqueue_trial({g: self.rng.uniform(KEEP_MIN, 1.0) for g in self.groups})
        trial = study.ask(self.space)
        trial.set_user_attr("trial_id", trial_id)
        modelled = self.sampler_name == "tpe" and done >= self.startup and not explore
        source = "optuna" if modelled else "random"
        self.pending[trial_id] = (level, trial)
        return {g: trial.params[g] for g in self.groups}, source

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
                distributions=self.space,
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
