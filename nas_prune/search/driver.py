"""The ladder's driver: proposes, projects, schedules rungs on the worker pool and records every result.

The order of work, the same on a fresh run and on ``--resume`` (everything already in the journal is
skipped, evaluations in flight at a kill are submitted again):

1. every seed at every rung (rung 0 first), so their fine-tune timings are known early;
2. rung 0 for sampled candidates, in batches that keep every worker busy, until ``--trials``
   candidates exist or the time left only covers the promotions planned for them (``--time-budget``);
3. rung by rung, the best of each cost level go up (:meth:`Ladder.promoted`).

The studies are told each sampled candidate's rung-0 score as it arrives (and the seeds', as finished
trials); evolution breeds from the journal's rung-0 scores (:meth:`Driver._parents`). No architecture
is evaluated twice: a proposal the projection maps onto a candidate already journaled moves to a grid
neighbour, and if none is new it is told to its study as failed and not evaluated, and the next
proposal is a uniform draw (TPE, told nothing new, would propose the same again: with repeats only
failed, a resnet20 latency search stopped after 14 candidates). A latency limit on a grid rounded to 8
leaves few architectures near the budget: two resnet20 TPE searches proposed 105 and 20 distinct ones
in 240 evaluations before this.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field

from tqdm import tqdm

from .journal import Journal
from .ladder import Ladder
from .projection import Projector, arch_key, level_schedule, scores_of
from .study import Proposals
from .workers import Job, WorkerPool

__all__ = ["Driver", "LadderStats"]

_MAX_INFEASIBLE_IN_A_ROW = 200
_MAX_REPEATS_IN_A_ROW = 200
_FINE_TUNE_PRIOR = 40.0
"""Before any fine-tune has finished, one fine-tune epoch is guessed at this many rung-0 evaluations
(a training epoch is ~9x the images of a rung-0 score, each ~3x the work, plus the optimizer; about 35
for resnet20 on Fashion-MNIST here); measured timings replace it as soon as the seeds' fine-tunes end."""


@dataclass
class LadderStats:
    """Time accounting of this session's ladder (fidelity.json's throughput and overhead)."""

    workers: int
    started: float = field(default_factory=time.perf_counter)
    wall: float = 0.0
    busy: float = 0.0
    driver: float = 0.0

    def add(self, result: dict) -> None:
        self.busy += result.get("wall_s") or 0.0

    @property
    def overhead_share(self) -> float | None:
        """The driver's own time (Optuna ask/tell, projection, Ray submission and result handling, the
        journal and trials.csv) over the workers' evaluation time: the CPU the search machinery takes
        from evaluating."""
        return None if self.busy <= 0 else self.driver / self.busy

    @property
    def idle_share(self) -> float | None:
        """Worker time spent neither evaluating nor queued work, over the evaluation time: the overhead
        above plus waiting at the ends of rungs (the last fine-tunes of a rung run while others idle)."""
        capacity = self.workers * self.wall
        return None if self.busy <= 0 else max(0.0, capacity - self.busy) / self.busy


class Driver:
    """Runs the ladder of one search on ``pool``; see the module docstring for the order of work."""

    def __init__(self, cfg, journal: Journal, ladder: Ladder, projector: Projector, proposals: Proposals,
                 levels: tuple[float, ...], seeds: list, pool: WorkerPool, quiet: bool):  # fmt: skip
        self.cfg, self.journal, self.ladder, self.projector = cfg, journal, ladder, projector
        self.proposals, self.levels, self.pool = proposals, levels, pool
        self.stats = LadderStats(cfg.workers)
        self.submitted: set[tuple[int, int]] = set()
        self.infeasible_in_a_row = self.repeats_in_a_row = 0
        self.seed_ids = self._register_seeds(seeds)
        self.proposed = {
            arch_key(c["widths"]) for c in journal.candidates.values() if not c.get("infeasible")
        }
        self.told = proposals.seeded()
        deadline = cfg.time_budget
        self.deadline = None if deadline is None else self.stats.started + deadline
        self.bar = tqdm(total=cfg.trials, desc="rung 0", unit="cand", disable=quiet, dynamic_ncols=True)
        self.bar.update(sum(rung == 0 for _, rung in journal.results))

    def _register_seeds(self, seeds: list) -> set[int]:
        """Journal a candidate for each seed not yet journaled; the seeds' trial ids."""
        known = {(c["source"], arch_key(c["widths"])): t for t, c in self.journal.candidates.items()}
        ids, events = set(), []
        for source, widths in seeds:
            key = (source, arch_key(widths))
            if key not in known:
                known[key] = self.journal.next_id + len(events)
                events.append(self._candidate(known[key], source, 1.0, widths))
            ids.add(known[key])
        self.journal.append(*events)
        return ids

    def _candidate(self, trial_id: int, source: str, level: float, widths: dict | None, retries=0) -> dict:
        event = {"kind": "candidate", "trial_id": trial_id, "source": source, "level": level}
        if retries:
            event["retries"] = retries  # grid neighbours tried because the proposal repeated
        if widths is None:  # the projection found nothing under the budget
            widths, event["infeasible"] = self.projector.space.smallest(), True
        event["widths"] = widths
        if self.projector.latency is not None:
            event["predicted_ms"] = self.projector.latency[0](widths)
        return event

    def _rung0_count(self) -> int:
        return sum(not c.get("infeasible") for c in self.journal.candidates.values())

    def _submit(self, trial_ids, rung: int) -> None:
        todo = [
            t for t in trial_ids if (t, rung) not in self.journal.results and (t, rung) not in self.submitted
        ]
        jobs = [Job(t, rung, self.ladder.epochs[rung], self.journal.candidates[t]["widths"]) for t in todo]
        self.submitted |= {(t, rung) for t in todo}
        size = self.cfg.jobs_per_call if rung == 0 else 1
        for start in range(0, len(jobs), size):
            self.pool.submit(jobs[start : start + size])

    # -- the phases ---------------------------------------------------------------------------------

    def run(self) -> LadderStats:
        try:
            seeds = sorted(self.seed_ids)
            for rung in range(self.ladder.top + 1):
                self._submit(seeds, rung)
            unscored = [t for t, c in self.journal.candidates.items() if not c.get("infeasible")]
            self._submit(unscored, 0)  # in flight at a kill: scored now
            self._sample()
            self._drain()
            for rung in range(self.ladder.top):
                self._submit(self.ladder.promoted(self.journal, rung, self.seed_ids), rung + 1)
                self._drain()
        finally:
            self.stats.wall = time.perf_counter() - self.stats.started
            self.bar.close()
        return self.stats

    def _sample(self) -> None:
        """Rung 0 for new candidates until ``--trials`` exist or the time left is needed for the rest."""
        while self._rung0_count() < self.cfg.trials and not self._out_of_time():
            if reason := self._stuck():
                print(f"\nwarning: {reason}; stopping rung 0", file=sys.stderr)
                return
            while self._room_for_proposals():
                self._propose(min(self.cfg.jobs_per_call, self.cfg.trials - self._rung0_count()))
            self._collect(timeout=1.0)

    def _room_for_proposals(self) -> bool:
        """A worker is free and more candidates are wanted; checked after every batch of proposals,
        since repeated architectures fill no worker slot."""
        wanted = self._rung0_count() < self.cfg.trials and not self._stuck() and not self._out_of_time()
        return self.pool.idle_slots() > 0 and wanted

    def _stuck(self) -> str:
        """Why proposals stopped adding candidates to evaluate ('' while they do)."""
        if self.infeasible_in_a_row >= _MAX_INFEASIBLE_IN_A_ROW:
            return f"{_MAX_INFEASIBLE_IN_A_ROW} infeasible proposals in a row"
        if self.repeats_in_a_row >= _MAX_REPEATS_IN_A_ROW:
            return (
                f"{_MAX_REPEATS_IN_A_ROW} proposals in a row were architectures already evaluated (few fit "
                "the budget on this grid)"
            )
        return ""

    def _propose(self, n: int) -> None:
        start = time.perf_counter()
        self._propose_batch(n)
        self.stats.driver += time.perf_counter() - start

    def _propose_batch(self, n: int) -> None:
        events = []
        sampled = sum(t not in self.seed_ids for t in self.journal.candidates)
        parents = self._parents()
        for _ in range(n):
            trial_id = self.journal.next_id + len(events)
            level = level_schedule(sampled + len(events), self.levels)
            proposal = self.proposals.propose(
                level, trial_id, self.projector, self.proposed, parents, self.repeats_in_a_row > 0
            )
            if proposal.repeats:  # evaluated or in flight: not again
                self.proposals.drop(trial_id)
                self.repeats_in_a_row += 1
                if self._stuck() or self._out_of_time():  # repeats fill no worker slot: check here
                    break
                continue
            self.repeats_in_a_row = 0
            widths = proposal.widths
            if widths is not None:
                self.proposed.add(arch_key(widths))
            events.append(self._candidate(trial_id, proposal.source, level, widths, proposal.retries))
            self.infeasible_in_a_row = self.infeasible_in_a_row + 1 if widths is None else 0
            if widths is None:
                self.proposals.tell(trial_id, None)
        self.journal.append(*events)
        self._submit([e["trial_id"] for e in events if not e.get("infeasible")], 0)
        infeasible = sum(bool(e.get("infeasible")) for e in events)
        if infeasible:
            self.bar.set_postfix(
                infeasible=sum(bool(c.get("infeasible")) for c in self.journal.candidates.values())
            )

    def _parents(self) -> dict[float, list[tuple[float, dict]]]:
        """Per cost level, ``(rung-0 score, widths)`` of every candidate scored there, seeds included:
        evolution's population, rebuilt from the journal (so also on ``--resume``); the score is what
        promotion ranks by (:meth:`Journal.rung0_scores`)."""
        parents = defaultdict(list)
        scores = self.journal.rung0_scores()
        for trial_id, cand in self.journal.candidates.items():
            score = scores.get(trial_id)
            if score is not None and not cand.get("infeasible"):
                parents[float(cand["level"])].append((score, cand["widths"]))
        return parents

    def _drain(self) -> None:
        while self.pool.busy:
            self._collect(timeout=None)

    def _collect(self, timeout: float | None) -> None:
        results = list(self.pool.results(timeout))  # waiting for workers is not the driver's overhead
        if not results:
            return
        start = time.perf_counter()
        self._record(results)
        self.stats.driver += time.perf_counter() - start

    def _record(self, results: list[dict]) -> None:
        self.journal.append(*({"kind": "result", **r} for r in results))
        for result in results:
            self.stats.add(result)
            self._tell(result)
            if result["rung"] == 0:
                self.bar.update(1)
            if result.get("error"):
                print(f"\nwarning: candidate {result['trial_id']} failed: {result['error']}", file=sys.stderr)

    def _tell(self, result: dict) -> None:
        """Optuna learns the rung-0 score of sampled candidates and seeds, once each."""
        trial_id = result["trial_id"]
        if result["rung"] != 0 or trial_id in self.told:
            return
        accuracy = None if result.get("error") else result["val_accuracy"]
        if trial_id in self.proposals.pending:
            self.proposals.tell(trial_id, accuracy)
        elif trial_id in self.seed_ids and accuracy is not None:
            cand = self.journal.candidates[trial_id]
            self.proposals.add_seed(
                scores_of(cand["widths"], self.projector.space), accuracy, cand["source"], trial_id
            )
        self.told.add(trial_id)

    # -- the time budget ----------------------------------------------------------------------------

    def _seconds(self, rung: int) -> float | None:
        """Mean seconds of one evaluation at ``rung``: measured, or guessed from rung 0's (None before
        any rung-0 evaluation has finished)."""
        done = [r.get("wall_s") or 0.0 for (_, k), r in self.journal.results.items() if k == rung]
        if done:
            return sum(done) / len(done)
        base = self._seconds(0) if rung else None
        return None if base is None else base * (1.0 + _FINE_TUNE_PRIOR * self.ladder.epochs[rung])

    def _out_of_time(self) -> bool:
        """True when the queued work plus the promotions planned for today's candidates would not finish
        before the deadline."""
        if self.deadline is None or self._seconds(0) is None:  # nothing measured yet: keep going
            return False
        queued = [job for _, jobs in self.pool.running.values() for job in jobs]
        queued += [job for jobs in self.pool.queue for job in jobs]
        work = sum(self._seconds(job.rung) for job in queued)
        per_level = defaultdict(int)
        for trial_id, cand in self.journal.candidates.items():
            if trial_id not in self.seed_ids and not cand.get("infeasible"):
                per_level[cand["level"]] += 1
        planned = self.ladder.planned(per_level.values())
        work += sum(n * self._seconds(r + 1) for r, n in enumerate(planned))
        safety = 0.05 * self.cfg.time_budget  # the estimate's error: stop a little early rather than late
        return time.perf_counter() + work / self.cfg.workers >= self.deadline - safety
