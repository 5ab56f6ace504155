"""Scale-out on Ray: one engine per Ray actor, jobs routed to the actor that holds their LoRAs.

- ``needs.py``: what a job needs (base pipeline, LoRA files by content hash), read from the workflow.
- ``router.py``: which actor runs which job, and in what order (pure Python; the simulator uses it too).
- ``actor.py``: the Ray actor wrapping one ``Engine`` and one ``Executor``; the engine learns nothing
  about Ray.
- ``pool.py``: starts or joins a Ray cluster, creates the actors, feeds them, retries lost jobs.
- ``output_commit.py``: the driver writes the actors' files under the names one process would have given.
- ``serve.py``: ``loragraph serve --ray`` (``loragraph run --ray`` is cli/ray_run.py).

Ray is an optional dependency (``pip install "loragraph[ray]"``): nothing here imports it at module
level, and ``require_ray`` turns its absence into one clear message.
"""

from __future__ import annotations

from typing import Any

INSTALL_HINT = 'pip install "loragraph[ray]"'


class RayUnavailable(RuntimeError):
    """Ray is not installed (or cannot be imported): the message says what to install."""


def require_ray() -> Any:
    """The ``ray`` module, or RayUnavailable naming the extra to install."""
    try:
        import ray
    except ImportError as ex:
        raise RayUnavailable(f"--ray needs Ray, which is not installed here ({ex}); install it with: "
                             f"{INSTALL_HINT}") from None
    return ray
