"""The ``loragraph`` command line: ``run``, ``validate``, ``inspect``, ``nodes``, ``serve``.

main.py parses and dispatches; run.py runs and validates workflow files (workflows.py reads them and
applies ``--set`` / ``--sweep``, sweep.py expands the grid); reports.py prints results and owns the
exit codes; inspect_lora.py describes a LoRA file; ray_run.py spreads a run over a Ray pool
(scaleout/); console.py and threads.py are the terminal and CPU-thread settings.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
