"""The terminal side of the command: logging to stderr, tqdm progress bars, Ctrl-C."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator
from typing import IO, Any

# What a terminal acts on instead of showing (docs/CONTRACT.md, "Terminal output"): C0 controls but
# tab and newline (ESC starts colour, cursor and title sequences; CR overwrites a line), DEL, the C1
# controls (CSI alone is one) and the bidirectional overrides that reorder what is shown.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal_safe(text: str) -> str:
    """``text`` with every character a terminal would act on shown as its escape (``\\x1b``).

    File names, LoRA metadata and node titles come from files anyone may have written; printed raw
    they could recolour the terminal, rewrite its title, hide lines or forge a result.
    """
    return _UNSAFE.sub(_escape, text)


class TerminalSafeWriter:
    """A text stream whose writes pass through ``terminal_safe`` (the command's stdout)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(terminal_safe(text))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


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
            return terminal_safe(record.getMessage())
        return terminal_safe(f"{record.levelname} {record.name}: {super().format(record)}")


@contextlib.contextmanager
def cli_logging(verbose: bool, quiet: bool = False, command: str = "") -> Iterator[None]:
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
        "loragraph.cli.threads": server_level,
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


class ProgressBar:
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


def progress_bar_factory(prompt_id: str, node_id: str, class_type: str) -> ProgressBar:
    return ProgressBar(node_id, class_type)


@contextlib.contextmanager
def interrupt_on_sigint(executor: Any) -> Iterator[None]:
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
