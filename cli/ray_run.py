"""``loragraph run --ray``: the runs of ``loragraph run`` (files, or one file's --sweep) on a pool.

The driver reads and checks the workflows as one process does, submits every runnable one as a job,
and reports in run order as results come in: files are written (``output_commit.py``), ``--json`` lines and
the summary printed, exactly as ``loragraph run`` would, then the per-actor summary. Exit status as
``loragraph run``. Ctrl-C stops the running jobs at their next step and starts no new one; a second
Ctrl-C stops at once. The actors end with the command either way.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import IO, Any

from ..scaleout import RayUnavailable
from ..scaleout.needs import job_needs
from ..scaleout.output_commit import commit_files
from ..scaleout.pool import Outcome, Pool
from ..scaleout.router import Job
from ..scaleout.sizing import size_from_env
from . import reports

logger = logging.getLogger(__name__)


def run_on_ray(args: argparse.Namespace, workflows: list[Any], out: IO[str]) -> int:
    runnable = [(i, wf) for i, wf in enumerate(workflows) if wf.prompt is not None]
    done: dict[int, Outcome] = {}
    cond = threading.Condition()

    def on_done(job: Job, outcome: Outcome) -> None:
        with cond:
            done[job.id] = outcome
            cond.notify_all()

    if not runnable:
        worst = reports.EXIT_OK
        for wf in workflows:
            worst = max(worst, reports.report_invalid(out, wf, args.json))
        return worst
    threads = args.threads or 1  # per actor: one CPU slot of one thread unless --threads says more
    # a run queues every job at once: the pool starts at the size that queue asks for (MAX, at most
    # one actor per job) rather than growing one actor per job time
    size = getattr(args, "ray_actors", None) or size_from_env()
    pool = Pool(args.models_dir, address=args.ray_address, size=size, limit=len(runnable),
                start_actors=len(runnable), threads=threads, on_done=on_done,
                policy=os.environ.get("LORAGRAPH_RAY_ROUTING", "affinity"))
    try:
        pool.start()
    except RayUnavailable as ex:
        sys.stderr.write(f"loragraph run: {ex}\n")
        return reports.EXIT_INVALID
    except Exception as ex:  # no cluster at --ray-address, actors that cannot start
        sys.stderr.write(f"loragraph run: could not start the Ray pool: {type(ex).__name__}: {ex}\n")
        pool.shutdown()
        return reports.EXIT_INVALID
    worst = reports.EXIT_OK
    interrupted = False
    bar = _job_bar(len(runnable))
    try:
        with _sigint_stops(pool) as pressed:
            for i, wf in runnable:
                pool.submit(Job(i, job_needs(wf.prompt), {"prompt": wf.prompt, "extra_data": wf.extra_data}))
            pool.close()
            for i, wf in enumerate(workflows):
                if wf.prompt is None:
                    worst = max(worst, reports.report_invalid(out, wf, args.json))
                    continue
                with cond:
                    while i not in done and not (pressed and _all_ended(pool)):
                        cond.wait(0.25)
                    outcome = done.pop(i, None)
                if outcome is None:  # interrupted before it ran
                    interrupted = True
                    break
                bar.update(1)
                status, result = _report(out, wf, outcome, args.json)
                worst = max(worst, status)
                if result is not None and result.interrupted:
                    interrupted = True
                    break
    finally:
        bar.close()
        pool.shutdown()
        _print_actor_summary(sys.stderr if args.json else out, pool)
    return reports.EXIT_INTERRUPTED if interrupted else worst


def _all_ended(pool: Pool) -> bool:
    return all(info.thread is None or not info.thread.is_alive() for info in pool.actors.values())


def _report(out: IO[str], wf: Any, outcome: Outcome, as_json: bool) -> tuple[int, Any]:
    if outcome.result is None:  # lost with its actors too often, or the actor call itself failed
        error = {"type": "ray_job_lost", "message": outcome.error or "lost", "details": "", "extra_info": {},
                 "node_errors": {}}
        report = {"file": wf.file, "status": "error", "outputs": {}, "error": error}
        if wf.sweep is not None:
            report["set"] = wf.sweep.values
        if as_json:
            reports.write_json_line(out, report)
        else:
            out.write(f"{wf.label}: error\n  error: {outcome.error}\n")
            out.flush()
        return reports.EXIT_ERROR, None
    result = outcome.result["result"]
    commit_files(outcome.result["files"], result.outputs)
    return reports.report_result(out, wf, result, as_json), result


def _job_bar(total: int) -> Any:
    from tqdm import tqdm

    # disable=None: shown on a terminal only, never mixed into a captured stderr
    return tqdm(total=total, desc="jobs", unit="job", file=sys.stderr, dynamic_ncols=True, disable=None)


class _sigint_stops:
    """First Ctrl-C: interrupt the running jobs and start no more; a second one aborts at once."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.pressed: list[bool] = []
        self.previous: Any = None

    def __enter__(self) -> list[bool]:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handler)
        return self.pressed

    def _handler(self, signum: int, frame: Any) -> None:
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed.append(True)
        sys.stderr.write("\nloragraph: interrupting the running jobs (Ctrl-C again to stop at once)\n")
        self.pool.stop_taking()
        self.pool.interrupt()

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def _print_actor_summary(out: IO[str], pool: Pool) -> None:
    rows = pool.summary()
    if not rows:
        return
    jobs = sum(r["jobs"] for r in rows)
    wall = (pool.ended_at or 0.0) - pool.started_at
    retried = f", {pool.retried} retried after an actor was lost" if pool.retried else ""
    out.write(f"ray: {len(rows)} actor{'s' * (len(rows) != 1)}, {jobs} job{'s' * (jobs != 1)} "
              f"in {wall:.2f} s, {pool.policy} routing{retried}\n")
    out.write(f"  {'actor':<6}{'jobs':>6}{'loads':>7}{'swaps':>7}{'busy s':>9}{'idle s':>9}  node\n")
    for r in rows:
        gone = "  (stopped idle)" if r["retired"] else "  (lost)" if not r["alive"] else ""
        out.write(f"  {r['actor']:<6}{r['jobs']:>6}{r['loads']:>7}{r['swaps']:>7}{r['busy_s']:>9.2f}"
                  f"{r['idle_s']:>9.2f}  {(r['node'] or '?')[:8]}{gone}\n")
    for job_id, lost_with in sorted(pool.moved.items()):
        ran = pool.moved_to.get(job_id)
        out.write(f"  moved: run {job_id + 1}, lost with {', '.join(lost_with)}, "
                  f"{'ran on ' + ran if ran else 'did not run'}\n")
    out.flush()
