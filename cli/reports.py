"""What the command reports: exit codes, the summary, ``--json`` lines, validation lines.

Standard output carries only what the command reports (a summary, or with ``--json`` one JSON line
per file); logs and progress bars go to standard error.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from .workflows import Workflow

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_INVALID = 2
EXIT_INTERRUPTED = 130  # the shell's code for "ended by Ctrl-C"
STATUS_EXIT = {"success": EXIT_OK, "error": EXIT_ERROR, "invalid": EXIT_INVALID}


def write_json_line(out: IO[str], data: Mapping[str, Any]) -> None:
    out.write(json.dumps(data, default=str) + "\n")
    out.flush()


def report_invalid(out: IO[str], wf: Workflow, as_json: bool) -> int:
    """Report a workflow that could not even be run (unreadable, bad --set/--sweep); its exit status."""
    report = {"file": wf.file, "status": "invalid", "outputs": {}, "error": wf.error}
    if wf.sweep is not None:
        report["set"] = wf.sweep.values
    if as_json:
        write_json_line(out, report)
    else:
        out.write(f"{wf.label}: invalid\n  error: {wf.error['message']}\n")  # type: ignore[index]
    return EXIT_INVALID


def report_result(out: IO[str], wf: Workflow, result: Any, as_json: bool, verbose: bool = False,
                   warnings: Sequence[str] = ()) -> int:
    """Report one run (a --json line or the summary); its exit status."""
    if as_json:
        for line in warnings:  # stdout holds only the pinned JSON line
            logger.warning("%s: %s", wf.label, line)
        report = _json_report(wf.file, result)
        if wf.sweep is not None:
            report["set"] = wf.sweep.values
        write_json_line(out, report)
    else:
        _print_summary(out, wf.label, wf.prompt, result, verbose, list(warnings))  # type: ignore[arg-type]
    return STATUS_EXIT.get(result.status, EXIT_ERROR)


def _json_report(file: str, result: Any) -> dict[str, Any]:
    error = result.error
    if result.status == "invalid":
        error = {**(error or {}), "node_errors": result.node_errors}
    return {"file": file, "status": result.status, "outputs": result.outputs, "error": error}


def _written_files(outputs: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str, Path]]:
    """(node id, kind, path) of every file the run's outputs name: images, previews, saved LoRAs."""
    from .. import host

    folders = {"output": host.output_dir(), "temp": host.temp_dir()}
    found = []
    for node_id, ui in outputs.items():
        for key, sub in (("images", ""), ("loras", "loras")):
            for item in ui.get(key) or []:
                if not isinstance(item, Mapping) or "filename" not in item:
                    continue
                kind = item.get("type", "output")
                base = folders.get(kind, host.output_dir())
                path = base / sub / (item.get("subfolder") or "") / item["filename"]
                label = "preview" if kind == "temp" else ("lora" if key == "loras" else "image")
                found.append((node_id, label, path))
    return found


def _shown_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def override_warnings(prompt: Mapping[str, Any], registry: Mapping[str, type]) -> list[str]:
    """One line per input that a later node always overrides (graph/overrides.py)."""
    from ..graph import overridden_inputs

    try:
        return [o.message(prompt) for o in overridden_inputs(prompt, registry)]
    except Exception:
        logger.debug("override analysis failed", exc_info=True)
        return []


def _print_summary(out: IO[str], file: str, prompt: Mapping[str, Any], result: Any, verbose: bool = False,
                   warnings: Sequence[str] = ()) -> None:
    ran = len(result.executed)
    failed = (result.error or {}).get("node_id") if result.status == "error" else None  # or interrupted
    head = f"{file}: {result.status}"
    if result.status != "invalid":
        head += f" in {result.wall_s:.2f} s ({ran} node{'s' * (ran != 1)} run, {len(result.cached)} cached"
        # Validation reads LoRA headers and imports the pipeline's classes (seconds the first time):
        # shown apart, so neither LoadPipeline's time nor the executor's overhead holds the imports.
        checked = result.phases_s.get("validate", 0.0)
        if checked >= 0.01:
            head += f"; checked in {checked:.2f} s"
        if ran and result.wall_s:
            rest = max(0.0, result.overhead_s - checked)
            head += f"; executor overhead {100.0 * rest / result.wall_s:.1f}%"
        head += ")"
    out.write(head + "\n")
    for line in warnings if result.status != "invalid" else ():
        out.write(f"  warning: {line}\n")
    rows = [(n, f"{result.timings[n]:8.3f} s") for n in result.executed]
    if failed is not None and failed in prompt:
        took = result.timings.get(failed)
        what = "  interrupted" if result.interrupted else "  failed"
        rows.append((failed, (f"{took:8.3f} s" if took is not None else "") + what))
    rows += [(n, "  cached") for n in result.cached]
    for node_id, what in rows:
        out.write(f"  {node_id:>4} {prompt[node_id]['class_type']:<22} {what}\n")
        out.write(_node_text(result.outputs.get(node_id)))
    for node_id, label, path in _written_files(result.outputs):
        out.write(f"  {label:<7} {_shown_path(path)}  (node {node_id})\n")
    lines = (validation_lines(result.error, result.node_errors, prompt) if result.status == "invalid"
             else result.error_lines(verbose))
    for line in lines:
        out.write(f"  error: {line}\n")
    out.flush()


def _node_text(ui: Mapping[str, Any] | None) -> str:
    """A node's text output (what it shows: LoRAInfo's report, warnings), indented under its line."""
    texts = (ui or {}).get("text") or []
    if isinstance(texts, str):
        texts = [texts]
    return "".join(f"         {line}\n" for text in texts for line in str(text).splitlines())


def validation_lines(error: Mapping[str, Any] | None, node_errors: Mapping[str, Any],
                      prompt: Mapping[str, Any]) -> list[str]:
    """The graph's validation lines; an unknown node type is named by id and class_type.

    (ComfyUI's message for it names the node's title, which in an exported workflow is the
    class's display name, not the class_type that is missing.)
    """
    from ..graph import format_validation_error

    if error is not None and error.get("type") == "missing_node_type":
        extra = error.get("extra_info") or {}
        class_type = extra.get("class_type")
        return [f"node {extra.get('node_id')} ({class_type}): unknown class_type {class_type!r}; "
                + "is the node pack that defines it installed?"]
    return format_validation_error(error, node_errors, prompt)
