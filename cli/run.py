"""``loragraph run`` and ``loragraph validate``.

``loragraph run A.json B.json`` runs the files in order in one process with one executor, so the
loaded pipelines, parsed LoRA files and cached node outputs carry over from one file to the next,
as they do between prompts on a ComfyUI server. A file that fails does not stop the ones after it;
the exit status is the worst one: 0 all succeeded, 1 some execution error, 2 some workflow invalid.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable
from typing import IO

from .console import interrupt_on_sigint, progress_bar_factory
from .reports import (
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    EXIT_OK,
    override_warnings,
    report_invalid,
    report_result,
    validation_lines,
    write_json_line,
)
from .workflows import Workflow, configure_host, load_workflows, sweep_workflows

logger = logging.getLogger(__name__)


def cmd_run(args: argparse.Namespace, out: IO[str]) -> int:
    from .. import host
    from ..graph import Executor
    from .threads import apply_threads

    apply_threads(args.threads)
    from ..loaders import engine  # noqa: F401 - import torch and diffusers before any clock starts
    from ..nodes import HEADLESS_NODE_CLASS_MAPPINGS

    configure_host(args)
    host.clean_stale_temps()
    registry = HEADLESS_NODE_CLASS_MAPPINGS
    workflows: Iterable[Workflow] = load_workflows(args.workflows, args.overrides, registry)
    if args.sweep:
        workflows = sweep_workflows(list(workflows), args.sweep, registry)  # lazy: one run at a time
    if args.ray:
        from .ray_run import run_on_ray

        return run_on_ray(args, list(workflows), out)  # every job is submitted at once
    executor = Executor(registry, progress_hook_factory=None if args.json else progress_bar_factory)
    worst = EXIT_OK
    with interrupt_on_sigint(executor):
        for wf in workflows:
            if wf.prompt is None:
                worst = max(worst, report_invalid(out, wf, args.json))
                continue
            logger.info("running %s", wf.label)
            warnings = override_warnings(wf.prompt, registry)
            result = executor.execute(wf.prompt, extra_data=wf.extra_data)
            worst = max(worst, report_result(out, wf, result, args.json, args.verbose, warnings))
            if result.interrupted:
                return EXIT_INTERRUPTED
    return worst


def cmd_validate(args: argparse.Namespace, out: IO[str]) -> int:
    from ..graph import validate_prompt
    from ..nodes import HEADLESS_NODE_CLASS_MAPPINGS

    configure_host(args)
    registry = HEADLESS_NODE_CLASS_MAPPINGS
    worst = EXIT_OK
    for wf in load_workflows(args.workflows, args.overrides, registry):
        error, lines = wf.error, [wf.error["message"]] if wf.error else []
        if wf.prompt is not None:
            ok, top, _, node_errors = validate_prompt(wf.prompt, registry)
            if not ok or node_errors:  # as the executor: any node error makes the workflow invalid
                error = {**(top or {"type": "prompt_outputs_failed_validation",
                                     "message": "Prompt outputs failed validation", "details": "",
                                     "extra_info": {}}), "node_errors": node_errors}
                lines = validation_lines(top, node_errors, wf.prompt)
        status = "invalid" if error else "valid"
        if status == "invalid":
            worst = EXIT_INVALID
        warnings = override_warnings(wf.prompt, registry) if status == "valid" else []
        if args.json:
            write_json_line(out, {"file": wf.file, "status": status, "error": error, "warnings": warnings})
        else:
            out.write(f"{wf.file}: {status}\n" + "".join(f"  error: {line}\n" for line in lines)
                      + "".join(f"  warning: {line}\n" for line in warnings))
    return worst
