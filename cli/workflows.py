"""Workflow files on the command line: read them, apply ``--set``, expand ``--sweep``."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def configure_host(args: argparse.Namespace, needs_models: bool = True) -> None:
    from .. import host

    models = Path(args.models_dir)
    if needs_models and not models.is_dir():
        logger.warning("models folder %s does not exist; only built-in models are available", models)
    host.configure(models_dir=models, output_dir=getattr(args, "output_dir", None))


@dataclass
class Workflow:
    """One workflow file on the command line, read and with its overrides applied (or why not)."""

    file: str
    prompt: dict[str, dict[str, Any]] | None = None
    error: dict[str, Any] | None = None
    overrides: list[str] = field(default_factory=list)
    extra_data: dict[str, Any] = field(default_factory=dict)  # the editor JSON, for SaveImage's PNGs
    sweep: Any = None  # with --sweep: this run's sweep.SweepRun

    @property
    def label(self) -> str:
        return f"{self.file} [{self.sweep.label()}]" if self.sweep is not None else self.file


def override_node(item: str) -> str:
    return item.partition("=")[0].strip().partition(".")[0]


def load_workflows(files: Sequence[str], overrides: Sequence[str],
                   registry: Mapping[str, type]) -> list[Workflow]:
    """Read every file, then apply the ``--set`` overrides.

    With one file an override naming a node it lacks is an error of that file. With several, an
    override applies to each file that has its node, and only one that matches no file at all is an
    error (of every file, since which one it was meant for cannot be known).
    """
    from ..graph import WorkflowError, apply_overrides, load_workflow_document

    workflows: list[Workflow] = []
    for file in files:
        wf = Workflow(file)
        try:
            loaded = load_workflow_document(file, registry)
            wf.prompt, wf.extra_data = loaded.prompt, loaded.extra_data()
        except WorkflowError as ex:
            wf.error = invalid_error(str(ex))
        workflows.append(wf)

    readable = [wf for wf in workflows if wf.prompt is not None]
    unmatched: list[str] = []
    for item in overrides:
        if len(files) == 1:
            for wf in readable:
                wf.overrides.append(item)
            continue
        users = [wf for wf in readable if override_node(item) in wf.prompt]  # type: ignore[operator]
        if readable and not users:
            unmatched.append(item)
        for wf in users:
            wf.overrides.append(item)

    for wf in readable:
        if unmatched:
            wf.prompt, wf.error = None, invalid_error(
                "; ".join(f"--set {item!r}: no workflow has a node with id {override_node(item)!r}"
                          for item in unmatched))
            continue
        try:
            wf.prompt = apply_overrides(wf.prompt, wf.overrides, registry)  # type: ignore[arg-type]
        except WorkflowError as ex:
            wf.prompt, wf.error = None, invalid_error(str(ex))
    return workflows


def invalid_error(message: str) -> dict[str, Any]:
    """A file-level problem (unreadable file, bad --set) in the shape of ComfyUI's top-level errors."""
    return {"type": "invalid_prompt", "message": message, "details": "", "extra_info": {}, "node_errors": {}}


def sweep_workflows(workflows: list[Workflow], items: Sequence[str],
                    registry: Mapping[str, type]) -> Iterator[Workflow]:
    """``--sweep``: the one workflow, once per point of the grid, in run order (sweep.py).

    The axes are checked at once; each run's workflow is built only when it is taken, so a sweep of
    many runs over a large workflow starts at once and holds one run's copy at a time.
    """
    from ..graph import WorkflowError
    from . import sweep

    if len(workflows) != 1:
        error = invalid_error(f"--sweep runs exactly one workflow file; {len(workflows)} were given")
        return iter([Workflow(wf.file, error=error) for wf in workflows])
    (wf,) = workflows
    if wf.prompt is None:
        return iter(workflows)
    try:
        axes = sweep.parse_sweeps(items)
        sweep.check_axes(wf.prompt, axes, registry)
    except WorkflowError as ex:
        return iter([Workflow(wf.file, error=invalid_error(str(ex)))])
    return _sweep_runs(wf, axes, registry)


def _sweep_runs(wf: Workflow, axes: Sequence[Any], registry: Mapping[str, type]) -> Iterator[Workflow]:
    from ..graph import apply_overrides
    from . import sweep

    for point in sweep.iter_grid(axes):
        prompt = apply_overrides(wf.prompt, point.overrides, registry)  # type: ignore[arg-type]
        yield Workflow(wf.file, prompt, overrides=[*wf.overrides, *point.overrides],
                       extra_data=wf.extra_data, sweep=point)
