"""The ``loragraph`` command: run and validate workflows, inspect LoRA files, list the nodes.

``loragraph run A.json B.json`` runs the files in order in one process with one executor, so the
loaded pipelines, parsed LoRA files and cached node outputs carry over from one file to the next,
as they do between prompts on a ComfyUI server. A file that fails does not stop the ones after it;
the exit status is the worst one: 0 all succeeded, 1 some execution error, 2 some workflow invalid.

Standard output carries only what the command reports (a summary, or with ``--json`` one JSON line
per file); logs and progress bars go to standard error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_INVALID = 2
EXIT_INTERRUPTED = 130  # the shell's code for "ended by Ctrl-C"
_STATUS_EXIT = {"success": EXIT_OK, "error": EXIT_ERROR, "invalid": EXIT_INVALID}

DEFAULT_MODEL = "builtin:tiny-sd"


# --- arguments ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand (also used by the README's CLI section)."""
    from . import __version__

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true",
                        help="log at DEBUG level (to stderr), with error classes and tracebacks")
    common.add_argument("-q", "--quiet", action="store_true", help="log errors only (serve: no per-prompt lines)")

    folders = argparse.ArgumentParser(add_help=False)
    folders.add_argument(
        "--models-dir",
        default="models",
        metavar="DIR",
        help="ComfyUI-style models root: DIR/loras, DIR/diffusers/<name>, DIR/checkpoints (default: ./models)",
    )

    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--output-dir", default="output", metavar="DIR",
                        help="where SaveImage and SaveLoRA write (default: ./output)")

    overrides = argparse.ArgumentParser(add_help=False)
    overrides.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="NODE_ID.INPUT=VALUE",
        help="change one input before running, e.g. --set 6.seed=7 (VALUE is JSON, else a string); "
        "repeatable; with several files it applies to each file that has that node",
    )

    threads = argparse.ArgumentParser(add_help=False)
    threads.add_argument(
        "--threads", type=_positive_int, default=None, metavar="N",
        help="torch CPU threads (default: the free cores now, CPUs minus the load average; "
        "OMP_NUM_THREADS if set)",
    )

    parser = argparse.ArgumentParser(
        prog="loragraph",
        description="diffusers' LoRA management as ComfyUI-style graph nodes, run headless.",
    )
    parser.add_argument("--version", action="version", version=f"loragraph {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser(
        "run",
        parents=[common, folders, output, overrides, threads],
        help="run workflow files in one process",
        description="Run workflow files in order, sharing loaded pipelines, LoRA files and cached outputs. "
        "Exit status: 0 all succeeded, 1 some execution error, 2 some workflow invalid.",
    )
    run.add_argument("workflows", nargs="+", metavar="WORKFLOW",
                     help="workflow files: API-format or editor JSON, or a PNG written by SaveImage")
    run.add_argument(
        "--json",
        action="store_true",
        help='print one JSON line per file: {"file", "status", "outputs", "error"} and nothing else',
    )
    _add_scaleout_arguments(run, sweep=True)

    validate = sub.add_parser(
        "validate",
        parents=[common, folders, output, overrides],
        help="check workflow files without running them",
        description="Validate workflow files as the executor would before running. "
        "Exit status: 0 all valid, 2 some workflow invalid.",
    )
    validate.add_argument("workflows", nargs="+", metavar="WORKFLOW",
                          help="workflow files: API-format or editor JSON, or a PNG written by SaveImage")
    validate.add_argument("--json", action="store_true", help='print one JSON line per file: {"file", "status", "error"}')

    inspect = sub.add_parser(
        "inspect",
        parents=[common, folders],
        help="describe a LoRA file and what of it lands on a pipeline",
        description="Print a LoRA file's summary (format, ranks, alphas, base model, trigger words) and "
        "its key coverage on a pipeline: which modules land, and why the others don't.",
    )
    inspect.add_argument("lora", metavar="LORA_FILE", help="a path, or a name inside --models-dir/loras")
    inspect.add_argument(
        "--model",
        default=None,
        help="pipeline to check the keys against, as LoadPipeline's model input (default: the built-in "
        f"model the file fits, else {DEFAULT_MODEL})",
    )
    inspect.add_argument("--json", action="store_true", help='print {"summary": ..., "coverage": ...} as JSON')

    nodes = sub.add_parser(
        "nodes",
        parents=[common, folders],
        help="print the node definitions (ComfyUI's /object_info)",
        description="Print the node definitions as JSON, in the shape of ComfyUI's GET /object_info.",
    )
    nodes.add_argument("names", nargs="*", metavar="CLASS_TYPE", help="only these nodes (default: all)")

    serve = sub.add_parser(
        "serve",
        parents=[common, folders, output, threads],
        help="serve ComfyUI's HTTP + websocket API (and the visual editor with loragraph[editor])",
        description="Queue workflows over ComfyUI's API (/prompt, /ws, /history, /view); existing ComfyUI "
        "clients work unchanged. Binds to loopback unless --allow-remote is given: the API has no "
        "authentication.",
    )
    serve.add_argument("--listen", default="127.0.0.1", metavar="ADDRESS",
                       help="address(es) to bind, comma-separated (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8188, help="port (default: 8188, ComfyUI's)")
    serve.add_argument("--input-dir", default="input", metavar="DIR", help="where /upload/image saves (default: ./input)")
    serve.add_argument("--user-dir", default="user", metavar="DIR", help="the editor's settings and saved workflows")
    serve.add_argument("--no-editor", action="store_true", help="serve the API only, not the visual editor")
    serve.add_argument("--allow-remote", action="store_true",
                       help="allow a non-loopback --listen address (anyone who reaches it can run workflows)")
    serve.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                       help="also answer requests for this Host name (repeatable), e.g. the name a reverse "
                       "proxy forwards; loopback addresses and localhost are always answered")
    serve.add_argument("--max-upload-size", type=float, default=50, metavar="MB",
                       help="largest request body in MB (default: 50)")
    _add_scaleout_arguments(serve, sweep=False)
    return parser


def _add_scaleout_arguments(parser: argparse.ArgumentParser, sweep: bool) -> None:
    """``--sweep`` (run) and ``--ray [--ray-address ADDRESS]`` (run, serve): see scaleout/."""
    if sweep:
        parser.add_argument(
            "--sweep", action="append", default=[], metavar="NODE_ID.INPUT=V1,V2,...",
            help="run the one WORKFLOW once per value, e.g. --sweep 6.seed=1-8 (A-B: an inclusive integer "
            "range); repeatable: the runs are the cartesian product, the first --sweep varying slowest")
    parser.add_argument("--ray", action="store_true",
                        help='spread the work over a Ray cluster, one engine per GPU or CPU slot '
                        '(needs pip install "loragraph[ray]")')
    parser.add_argument("--ray-address", default=None, metavar="ADDRESS",
                        help="an existing Ray cluster (default: $RAY_ADDRESS, else start a local one)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _cmd_serve(args: argparse.Namespace, out: IO[str]) -> int:
    from .server import RemoteBindRefused, run
    from .threads import apply_threads

    apply_threads(args.threads)
    extra: dict[str, Any] = {}
    if args.ray:  # the server fronts a pool of engine actors (scaleout/serve.py)
        from .scaleout import RayUnavailable, require_ray
        from .scaleout.serve import worker_factory

        try:
            require_ray()
        except RayUnavailable as ex:
            sys.stderr.write(f"loragraph serve: {ex}\n")
            return EXIT_INVALID
        extra["worker_factory"] = worker_factory(args.models_dir, args.ray_address,
                                                 threads=args.threads or 1)
    try:
        run(host=args.listen, port=args.port, models_dir=args.models_dir, output_dir=args.output_dir,
            input_dir=args.input_dir, allow_remote=args.allow_remote, user_dir=args.user_dir,
            allow_hosts=tuple(args.allow_host),
            editor=not args.no_editor, max_upload_size=int(args.max_upload_size * 1024 * 1024),
            progress_hook_factory=None if args.quiet else _progress_bar_factory, **extra)
    except (RemoteBindRefused, OSError, ValueError) as ex:  # OSError: the port is taken; ValueError: --allow-host
        sys.stderr.write(f"loragraph serve: {ex}\n")
        return EXIT_INVALID
    return EXIT_OK


# --- entry point -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``loragraph`` command line; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as ex:  # argparse exits on --help, --version and usage errors
        return int(ex.code) if isinstance(ex.code, int) else EXIT_INVALID
    commands = {
        "run": _cmd_run,
        "validate": _cmd_validate,
        "inspect": _cmd_inspect,
        "nodes": _cmd_nodes,
        "serve": _cmd_serve,
    }
    out = sys.stdout
    try:
        # Whatever a library prints lands on stderr: stdout is the command's own report (--json).
        with _cli_logging(args.verbose, args.quiet, args.command), contextlib.redirect_stdout(sys.stderr):
            return commands[args.command](args, out)
    except KeyboardInterrupt:
        sys.stderr.write("loragraph: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `loragraph nodes | head`
        return EXIT_OK


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (pytest swaps it per test)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        pass


class _ConsoleFormatter(logging.Formatter):
    """Plain messages for INFO (serve's console, as ComfyUI's); level and logger name for the rest."""

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno == logging.INFO:
            return record.getMessage()
        return f"{record.levelname} {record.name}: {super().format(record)}"


@contextlib.contextmanager
def _cli_logging(verbose: bool, quiet: bool = False, command: str = "") -> Iterator[None]:
    """Logs to stderr: warnings and up, everything with -v, errors only with -q. ``serve`` also logs
    its INFO lines (URL, prompts queued, done, failed), as ComfyUI's console does. Restores the
    logging setup afterwards, so that ``main()`` can be called in-process (tests, notebooks)."""
    # diffusers and transformers read these once, at import: quiet their advisory chatter unless -v.
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "info" if verbose else "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "info" if verbose else "error")
    ours = logging.DEBUG if verbose else logging.ERROR if quiet else logging.WARNING
    server_level = ours if verbose or quiet or command != "serve" else logging.INFO
    levels = {
        "": ours,
        "loragraph": ours,
        "loragraph.server": server_level,
        "loragraph.threads": server_level,
        # The executor logs each failure as it happens; the CLI and the server report every result.
        "loragraph.graph": logging.DEBUG if verbose else logging.CRITICAL,
        "diffusers": logging.INFO if verbose else logging.ERROR,
        "transformers": logging.INFO if verbose else logging.ERROR,
    }
    saved = {name: logging.getLogger(name).level for name in levels}
    handler = _StderrHandler()
    handler.setFormatter(_ConsoleFormatter("%(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        root.removeHandler(handler)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _configure_host(args: argparse.Namespace, needs_models: bool = True) -> None:
    from . import host

    models = Path(args.models_dir)
    if needs_models and not models.is_dir():
        logger.warning("models folder %s does not exist; only built-in models are available", models)
    host.configure(models_dir=models, output_dir=getattr(args, "output_dir", None))


def _write_json_line(out: IO[str], data: Mapping[str, Any]) -> None:
    out.write(json.dumps(data, default=str) + "\n")
    out.flush()


# --- workflows and overrides -------------------------------------------------------------------


@dataclass
class _Workflow:
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


def _override_node(item: str) -> str:
    return item.partition("=")[0].strip().partition(".")[0]


def _load_workflows(files: Sequence[str], overrides: Sequence[str], registry: Mapping[str, type]) -> list[_Workflow]:
    """Read every file, then apply the ``--set`` overrides.

    With one file an override naming a node it lacks is an error of that file. With several, an
    override applies to each file that has its node, and only one that matches no file at all is an
    error (of every file, since which one it was meant for cannot be known).
    """
    from .graph import WorkflowError, apply_overrides, load_workflow_document

    workflows: list[_Workflow] = []
    for file in files:
        wf = _Workflow(file)
        try:
            loaded = load_workflow_document(file, registry)
            wf.prompt, wf.extra_data = loaded.prompt, loaded.extra_data()
        except WorkflowError as ex:
            wf.error = _invalid_error(str(ex))
        workflows.append(wf)

    readable = [wf for wf in workflows if wf.prompt is not None]
    unmatched: list[str] = []
    for item in overrides:
        if len(files) == 1:
            for wf in readable:
                wf.overrides.append(item)
            continue
        users = [wf for wf in readable if _override_node(item) in wf.prompt]  # type: ignore[operator]
        if readable and not users:
            unmatched.append(item)
        for wf in users:
            wf.overrides.append(item)

    for wf in readable:
        if unmatched:
            wf.prompt, wf.error = None, _invalid_error(
                "; ".join(f"--set {item!r}: no workflow has a node with id {_override_node(item)!r}"
                          for item in unmatched))
            continue
        try:
            wf.prompt = apply_overrides(wf.prompt, wf.overrides, registry)  # type: ignore[arg-type]
        except WorkflowError as ex:
            wf.prompt, wf.error = None, _invalid_error(str(ex))
    return workflows


def _invalid_error(message: str) -> dict[str, Any]:
    """A file-level problem (unreadable file, bad --set) in the shape of ComfyUI's top-level errors."""
    return {"type": "invalid_prompt", "message": message, "details": "", "extra_info": {}, "node_errors": {}}


# --- run ---------------------------------------------------------------------------------------


class _ProgressBar:
    """A tqdm bar for one node's progress reports (the executor's ``progress`` events)."""

    def __init__(self, node_id: str, class_type: str) -> None:
        self.label = f"#{node_id} {class_type}"
        self.bar: Any = None

    def __call__(self, value: float, total: float) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.label, unit="step", file=sys.stderr, leave=True,
                            dynamic_ncols=True)
        if self.bar.total != total:
            self.bar.total = total
        self.bar.update(value - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _progress_bar_factory(prompt_id: str, node_id: str, class_type: str) -> _ProgressBar:
    return _ProgressBar(node_id, class_type)


@contextlib.contextmanager
def _interrupt_on_sigint(executor: Any) -> Iterator[None]:
    """First Ctrl-C: stop the running workflow at the next step; a second one aborts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed = []

    def handler(signum: int, frame: Any) -> None:
        if pressed:
            raise KeyboardInterrupt
        pressed.append(True)
        sys.stderr.write("\nloragraph: interrupting (Ctrl-C again to abort at once)\n")
        executor.interrupt()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _cmd_run(args: argparse.Namespace, out: IO[str]) -> int:
    from . import host
    from .graph import Executor
    from .threads import apply_threads

    apply_threads(args.threads)
    from .loaders import engine  # noqa: F401 - import torch and diffusers before any clock starts
    from .nodes import HEADLESS_NODE_CLASS_MAPPINGS

    _configure_host(args)
    host.clean_stale_temps()
    registry = HEADLESS_NODE_CLASS_MAPPINGS
    workflows = _load_workflows(args.workflows, args.overrides, registry)
    if args.sweep:
        workflows = _sweep_workflows(workflows, args.sweep, registry)
    if args.ray:
        from .scaleout.cli_run import run_on_ray

        return run_on_ray(args, workflows, out)
    executor = Executor(registry, progress_hook_factory=None if args.json else _progress_bar_factory)
    worst = EXIT_OK
    with _interrupt_on_sigint(executor):
        for wf in workflows:
            if wf.prompt is None:
                worst = max(worst, _report_invalid(out, wf, args.json))
                continue
            logger.info("running %s", wf.label)
            warnings = _override_warnings(wf.prompt, registry)
            result = executor.execute(wf.prompt, extra_data=wf.extra_data)
            worst = max(worst, _report_result(out, wf, result, args.json, args.verbose, warnings))
            if result.interrupted:
                return EXIT_INTERRUPTED
    return worst


def _report_invalid(out: IO[str], wf: _Workflow, as_json: bool) -> int:
    """Report a workflow that could not even be run (unreadable, bad --set/--sweep); its exit status."""
    report = {"file": wf.file, "status": "invalid", "outputs": {}, "error": wf.error}
    if wf.sweep is not None:
        report["set"] = wf.sweep.values
    if as_json:
        _write_json_line(out, report)
    else:
        out.write(f"{wf.label}: invalid\n  error: {wf.error['message']}\n")  # type: ignore[index]
    return EXIT_INVALID


def _report_result(out: IO[str], wf: _Workflow, result: Any, as_json: bool, verbose: bool = False,
                   warnings: Sequence[str] = ()) -> int:
    """Report one run (a --json line or the summary); its exit status."""
    if as_json:
        for line in warnings:  # stdout holds only the pinned JSON line
            logger.warning("%s: %s", wf.label, line)
        report = _json_report(wf.file, result)
        if wf.sweep is not None:
            report["set"] = wf.sweep.values
        _write_json_line(out, report)
    else:
        _print_summary(out, wf.label, wf.prompt, result, verbose, list(warnings))  # type: ignore[arg-type]
    return _STATUS_EXIT.get(result.status, EXIT_ERROR)


def _sweep_workflows(workflows: list[_Workflow], items: Sequence[str], registry: Mapping[str, type]) -> list[_Workflow]:
    """``--sweep``: the one workflow, once per point of the grid, in run order (sweep.py)."""
    from . import sweep
    from .graph import WorkflowError, apply_overrides

    if len(workflows) != 1:
        error = _invalid_error(f"--sweep runs exactly one workflow file; {len(workflows)} were given")
        return [_Workflow(wf.file, error=error) for wf in workflows]
    (wf,) = workflows
    if wf.prompt is None:
        return workflows
    try:
        axes = sweep.parse_sweeps(items)
        sweep.check_axes(wf.prompt, axes, registry)
    except WorkflowError as ex:
        return [_Workflow(wf.file, error=_invalid_error(str(ex)))]
    runs = []
    for point in sweep.grid(axes):
        prompt = apply_overrides(wf.prompt, point.overrides, registry)
        runs.append(_Workflow(wf.file, prompt, overrides=[*wf.overrides, *point.overrides],
                              extra_data=wf.extra_data, sweep=point))
    return runs


def _json_report(file: str, result: Any) -> dict[str, Any]:
    error = result.error
    if result.status == "invalid":
        error = {**(error or {}), "node_errors": result.node_errors}
    return {"file": file, "status": result.status, "outputs": result.outputs, "error": error}


def _written_files(outputs: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str, Path]]:
    """(node id, kind, path) of every file the run's outputs name: images, previews, saved LoRAs."""
    from . import host

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


def _override_warnings(prompt: Mapping[str, Any], registry: Mapping[str, type]) -> list[str]:
    """One line per input that a later node always overrides (graph/overrides.py)."""
    from .graph import overridden_inputs

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
        if ran and result.wall_s:
            head += f"; executor overhead {100.0 * result.overhead_s / result.wall_s:.1f}%"
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
    lines = (_validation_lines(result.error, result.node_errors, prompt) if result.status == "invalid"
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


def _validation_lines(error: Mapping[str, Any] | None, node_errors: Mapping[str, Any],
                      prompt: Mapping[str, Any]) -> list[str]:
    """The graph's validation lines; an unknown node type is named by id and class_type.

    (ComfyUI's message for it names the node's title, which in an exported workflow is the
    class's display name, not the class_type that is missing.)
    """
    from .graph import format_validation_error

    if error is not None and error.get("type") == "missing_node_type":
        extra = error.get("extra_info") or {}
        class_type = extra.get("class_type")
        return [f"node {extra.get('node_id')} ({class_type}): unknown class_type {class_type!r}; "
                + "is the node pack that defines it installed?"]
    return format_validation_error(error, node_errors, prompt)


# --- validate ----------------------------------------------------------------------------------


def _cmd_validate(args: argparse.Namespace, out: IO[str]) -> int:
    from .graph import validate_prompt
    from .nodes import HEADLESS_NODE_CLASS_MAPPINGS

    _configure_host(args)
    registry = HEADLESS_NODE_CLASS_MAPPINGS
    worst = EXIT_OK
    for wf in _load_workflows(args.workflows, args.overrides, registry):
        error, lines = wf.error, [wf.error["message"]] if wf.error else []
        if wf.prompt is not None:
            ok, top, _, node_errors = validate_prompt(wf.prompt, registry)
            if not ok or node_errors:  # as the executor: any node error makes the workflow invalid
                error = {**(top or {"type": "prompt_outputs_failed_validation",
                                     "message": "Prompt outputs failed validation", "details": "",
                                     "extra_info": {}}), "node_errors": node_errors}
                lines = _validation_lines(top, node_errors, wf.prompt)
        status = "invalid" if error else "valid"
        if status == "invalid":
            worst = EXIT_INVALID
        warnings = _override_warnings(wf.prompt, registry) if status == "valid" else []
        if args.json:
            _write_json_line(out, {"file": wf.file, "status": status, "error": error, "warnings": warnings})
        else:
            out.write(f"{wf.file}: {status}\n" + "".join(f"  error: {line}\n" for line in lines)
                      + "".join(f"  warning: {line}\n" for line in warnings))
    return worst


# --- inspect -----------------------------------------------------------------------------------


def _cmd_inspect(args: argparse.Namespace, out: IO[str]) -> int:
    from . import host
    from .loaders import store
    from .loaders.coverage import coverage as lora_coverage
    from .loaders.engine import get_engine
    from .loaders.files import LoraFileError

    path = Path(args.lora)
    # A file given by its path needs no models folder (the default --model is built in).
    _configure_host(args, needs_models=not path.is_file() or not (args.model or "builtin:").startswith("builtin:"))
    if not path.is_file():
        try:
            path = host.resolve_in("loras", args.lora)
        except (ValueError, FileNotFoundError):
            sys.stderr.write(f"loragraph inspect: {args.lora}: no such file (nor in {args.models_dir}/loras)\n")
            return EXIT_INVALID
    try:
        lora = store.read_lora(path)
    except LoraFileError as ex:
        sys.stderr.write(f"loragraph inspect: {ex}\n")
        return EXIT_INVALID
    summary = lora.summary()
    # --- #15: the algorithm per module, and with no --model the built-in models the file fits ---
    from .loaders import fit

    summary["module_algorithms"] = fit.module_algorithms(lora)
    model = args.model
    if model is None:
        summary["fits"] = fit.builtin_fits(lora)
        model = summary["fits"][0] if summary["fits"] else DEFAULT_MODEL
        if summary["fits"] and summary.get("base_model") == "other":
            summary["base_model"] = summary["fits"][0]
            summary["base_model_reason"] = f"all {len(lora.modules)} modules land on it"
    # --- end #15 ---

    coverage: dict[str, Any] | None = None
    coverage_text = ""
    if model:
        engine = get_engine()
        try:
            pipe = fit.built(model) if args.model is None else None  # #15: the guess built it already
            if pipe is None:
                handle = engine.load_pipeline(model)
                pipe = engine.live(handle.source).pipe
        except Exception as ex:  # noqa: BLE001 - any reason the model cannot be built is a usage error here
            sys.stderr.write(f"loragraph inspect: --model {model}: {ex}\n")
            return EXIT_INVALID
        try:
            cov = lora_coverage(pipe, lora)
            coverage = {**cov.to_dict(), "model": model, "loadable": cov.loadable, "message": cov.message()}
            coverage_text = cov.message()
        except LoraFileError as ex:
            coverage = {"model": model, "loadable": False, "message": str(ex)}
            coverage_text = str(ex)

    if args.json:
        _write_json_line(out, {"summary": summary, "coverage": coverage})
        return EXIT_OK
    out.write(_format_summary(summary))
    if coverage is not None:
        out.write(f"coverage on {model}:\n  {coverage_text}\n")
    out.flush()
    return EXIT_OK


def _format_summary(summary: Mapping[str, Any]) -> str:
    def fmt(value: Any) -> str:
        if isinstance(value, (list, tuple)):
            return ", ".join(fmt(v) for v in value) or "-"
        if isinstance(value, Mapping):
            return ", ".join(f"{k} {fmt(v)}" for k, v in value.items()) or "-"
        return "-" if value is None or value == "" else str(value)

    rows = [
        ("file", summary.get("path")),
        ("title", summary.get("title")),
        ("format", summary.get("format")),
        ("size", f"{summary.get('size', 0):,} bytes"),
        ("sha256", summary.get("sha256")),
        ("short hash", summary.get("short_hash")),
        ("modules", summary.get("modules")),
        ("per component", summary.get("components")),
        ("algorithms", summary.get("algorithms")),
        ("ranks", summary.get("ranks")),
        ("alphas", f"{fmt(summary.get('effective_alphas') or [])}"
                   + ("" if summary.get("alpha_in_file", True) or not summary.get("effective_alphas")
                      else " (= rank: the file stores none)")),
        ("base model", f"{summary.get('base_model')} ({summary.get('base_model_reason')})"),
        *([("fits", summary["fits"])] if "fits" in summary else []),
        ("trigger words", summary.get("trigger_words")),
        ("training", summary.get("training")),
        ("non-finite", summary.get("nonfinite_keys")),
    ]
    return "".join(f"{name + ':':<15}{fmt(value)}\n" for name, value in rows)


# --- nodes -------------------------------------------------------------------------------------


def _cmd_nodes(args: argparse.Namespace, out: IO[str]) -> int:
    from .nodes import HEADLESS_NODE_CLASS_MAPPINGS
    from .nodes.object_info import object_info

    _configure_host(args)
    unknown = [n for n in args.names if n not in HEADLESS_NODE_CLASS_MAPPINGS]
    if unknown:
        sys.stderr.write(f"loragraph nodes: unknown node(s) {', '.join(unknown)}; "
                         f"known: {', '.join(HEADLESS_NODE_CLASS_MAPPINGS)}\n")
        return EXIT_INVALID
    info = object_info(HEADLESS_NODE_CLASS_MAPPINGS, only=args.names or None)
    out.write(json.dumps(info, indent=2) + "\n")
    out.flush()
    return EXIT_OK

