"""The ``loragraph`` command: the argument parser and the entry point that dispatches a subcommand."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from typing import IO, Any

from .console import TerminalSafeWriter, cli_logging, progress_bar_factory
from .inspect_lora import DEFAULT_MODEL, cmd_inspect
from .reports import EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK
from .run import cmd_run, cmd_validate
from .workflows import configure_host

# --- arguments ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand (the tests read the options from it too)."""
    from .. import __version__

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true",
                        help="log at DEBUG level (to stderr), with error classes and tracebacks")
    common.add_argument("-q", "--quiet", action="store_true",
                        help="log errors only (serve: no per-prompt lines)")

    folders = argparse.ArgumentParser(add_help=False)
    folders.add_argument(
        "--models-dir",
        default="models",
        metavar="DIR",
        help="ComfyUI-style models root: DIR/loras, DIR/diffusers/<name>, DIR/checkpoints "
        "(default: ./models)",
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
    validate.add_argument("--json", action="store_true",
                          help='print one JSON line per file: {"file", "status", "error"}')

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
    inspect.add_argument("--json", action="store_true",
                         help='print {"summary": ..., "coverage": ...} as JSON')

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
    serve.add_argument("--input-dir", default="input", metavar="DIR",
                       help="where /upload/image saves (default: ./input)")
    serve.add_argument("--user-dir", default="user", metavar="DIR",
                       help="the editor's settings and saved workflows")
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
            "range), or per element of a JSON array: --sweep '4.weights=[\"1.0, 0.8\", \"0.5, 0.8\"]'; "
            "repeatable: the runs are the cartesian product, the first --sweep varying slowest")
    parser.add_argument("--ray", action="store_true",
                        help='spread the work over a Ray cluster, one engine per GPU or CPU slot '
                        '(needs pip install "loragraph[ray]")')
    parser.add_argument("--ray-address", default=None, metavar="ADDRESS",
                        help="an existing Ray cluster (default: $RAY_ADDRESS, else start a local one)")
    parser.add_argument("--ray-actors", default=None, metavar="MIN-MAX", type=_pool_size,
                        help="actors: N, or MIN-MAX to follow the queue (default 1-the cluster's GPUs, "
                        "else CPU slots; docs/scale-out.md)")
    if not sweep:
        parser.add_argument("--ray-affinity-wait", default=None, type=_seconds, metavar="SECONDS",
                            help="a prompt may wait this long for a busy actor holding its LoRAs rather "
                            "than go to an idle one (default: one LoRA load's time; docs/scale-out.md)")


def _pool_size(text: str) -> Any:
    from ..scaleout.sizing import PoolSize

    try:
        return PoolSize.parse(text)
    except ValueError as ex:  # argparse names the option itself
        raise argparse.ArgumentTypeError(str(ex).removeprefix("--ray-actors: ")) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _cmd_serve(args: argparse.Namespace, out: IO[str]) -> int:
    from ..server import RemoteBindRefused, run
    from .threads import apply_threads

    apply_threads(args.threads)
    extra: dict[str, Any] = {}
    if args.ray:  # the server fronts a pool of engine actors (scaleout/serve.py)
        from ..scaleout import RayUnavailable, require_ray
        from ..scaleout.serve import worker_factory

        try:
            require_ray()
        except RayUnavailable as ex:
            sys.stderr.write(f"loragraph serve: {ex}\n")
            return EXIT_INVALID
        extra["worker_factory"] = worker_factory(args.models_dir, args.ray_address,
                                                 threads=args.threads or 1, size=args.ray_actors,
                                                 affinity_wait_s=args.ray_affinity_wait)
    try:
        run(host=args.listen, port=args.port, models_dir=args.models_dir, output_dir=args.output_dir,
            input_dir=args.input_dir, allow_remote=args.allow_remote, user_dir=args.user_dir,
            allow_hosts=tuple(args.allow_host),
            editor=not args.no_editor, max_upload_size=int(args.max_upload_size * 1024 * 1024),
            progress_hook_factory=None if args.quiet else progress_bar_factory, **extra)
    # OSError: the port is taken; ValueError: --allow-host
    except (RemoteBindRefused, OSError, ValueError) as ex:
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
        "run": cmd_run,
        "validate": cmd_validate,
        "inspect": cmd_inspect,
        "nodes": _cmd_nodes,
        "serve": _cmd_serve,
    }
    out: IO[str] = TerminalSafeWriter(sys.stdout)  # type: ignore[assignment]  # no escape reaches the terminal
    try:
        # Whatever a library prints lands on stderr: stdout is the command's own report (--json).
        with cli_logging(args.verbose, args.quiet, args.command), contextlib.redirect_stdout(sys.stderr):
            return commands[args.command](args, out)
    except KeyboardInterrupt:
        sys.stderr.write("loragraph: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `loragraph nodes | head`
        return EXIT_OK


# --- nodes -------------------------------------------------------------------------------------


def _cmd_nodes(args: argparse.Namespace, out: IO[str]) -> int:
    from ..nodes import HEADLESS_NODE_CLASS_MAPPINGS
    from ..nodes.object_info import object_info

    configure_host(args)
    unknown = [n for n in args.names if n not in HEADLESS_NODE_CLASS_MAPPINGS]
    if unknown:
        sys.stderr.write(f"loragraph nodes: unknown node(s) {', '.join(unknown)}; "
                         f"known: {', '.join(HEADLESS_NODE_CLASS_MAPPINGS)}\n")
        return EXIT_INVALID
    info = object_info(HEADLESS_NODE_CLASS_MAPPINGS, only=args.names or None)
    out.write(json.dumps(info, indent=2) + "\n")
    out.flush()
    return EXIT_OK
