"""The engine's settings: one object, read from the environment once, then passed down.

Nothing in the engine reads `os.environ` itself. `EngineConfig.from_env()` is the one reader; the
process-wide `get_config()` calls it on first use (not at import), and an `Engine` built with an
explicit config passes its values to the parts that need them (pipeline cache, LoRA store,
reconciler, fence).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Mapping
from typing import Literal, TypeVar

FastPaths = Literal["auto", "on", "off"]
_Default = TypeVar("_Default", bound=int | None)  # an unset variable's value: a number, or None

# The parsed-file cache is bounded by the files' total size: parsed LoRAs live in RAM as CPU
# tensors, and 2 GiB holds dozens of typical (10-300 MB) LoRAs without crowding out the models.
DEFAULT_LORA_CACHE_BYTES = 2 * 1024**3
# Bytes of inactive adapters kept loaded: ~20 SD1.5 rank-32 LoRAs, a small share of a GPU.
DEFAULT_PARKED_BYTES = 1 << 30


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Budgets and switches of the engine (environment variable in brackets).

    lora_cache_bytes: total file bytes of parsed LoRAs kept in RAM [LORAGRAPH_LORA_CACHE_BYTES].
    parked_bytes: bytes of inactive adapters left loaded per pipeline [LORAGRAPH_PARKED_BYTES].
    pipeline_cache_bytes: parameter bytes of live pipelines kept; None = half the machine's RAM
        [LORAGRAPH_PIPELINE_CACHE_BYTES].
    fast_paths: "auto" uses the fence's shortcuts on the diffusers/peft versions they were verified
        on and the plain public path elsewhere; "off" always the public path; "on" forces the
        shortcuts on any version (at your own risk) [LORAGRAPH_FAST_PATHS].
    """

    lora_cache_bytes: int = DEFAULT_LORA_CACHE_BYTES
    parked_bytes: int = DEFAULT_PARKED_BYTES
    pipeline_cache_bytes: int | None = None
    fast_paths: FastPaths = "auto"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> EngineConfig:
        """The configuration the environment asks for; unset variables keep the defaults."""
        env = os.environ if env is None else env

        def integer(name: str, default: _Default) -> int | _Default:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                return int(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r}: expected a whole number of bytes") from None

        fast = env.get("LORAGRAPH_FAST_PATHS", "auto").strip().lower() or "auto"
        if fast not in ("auto", "on", "off"):
            raise ValueError(f"LORAGRAPH_FAST_PATHS={fast!r}: expected auto, on or off")
        return cls(
            lora_cache_bytes=integer("LORAGRAPH_LORA_CACHE_BYTES", DEFAULT_LORA_CACHE_BYTES),
            parked_bytes=integer("LORAGRAPH_PARKED_BYTES", DEFAULT_PARKED_BYTES),
            pipeline_cache_bytes=integer("LORAGRAPH_PIPELINE_CACHE_BYTES", None),
            fast_paths=fast,  # type: ignore[arg-type]
        )


_config: EngineConfig | None = None
_lock = threading.Lock()


def get_config() -> EngineConfig:
    """The process-wide configuration, read from the environment on first use."""
    global _config
    with _lock:
        if _config is None:
            _config = EngineConfig.from_env()
        return _config
