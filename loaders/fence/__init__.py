"""The fence: every touch of a private diffusers or peft name, and nothing else.

The engine drives diffusers and peft through their public API, except in the few places below
where a private name buys speed or fills a gap. Each entry says the versions it was verified on,
the public API it stands in for, and its fallback: the plain public path, slower but correct. The
fast path runs only where `fast_paths()` says so: on the verified versions (`VERIFIED`), unless
the configuration (`fast_paths`: auto/on/off, LORAGRAPH_FAST_PATHS) says otherwise. Anywhere
else the fallback runs, so a diffusers or peft release that renames one of these internals costs
speed, never correctness. No other module of the package may name a private diffusers/peft
attribute (tests/test_fence.py checks it).

One module per topic: `loadable` (which components take LoRAs), `loading` (a parsed file with its
metadata), `fused_record` (fusion bookkeeping), `hotswap`, `lycoris` (LyCORIS layers built with
peft's tuners), `gemm_merge` (fusion inside peft's layers), `set_adapters` (layer by layer),
`stacking` (loads next to many adapters), `swap_checks` (diffusers' per-load walks a hotswap does
not need). This module keeps the versions and the mode; every public name of the topics is
re-exported here, so `fence.x` is the way to call each.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import threading
from collections.abc import Iterator, Mapping
from functools import lru_cache

from ..config import FastPaths, get_config

logger = logging.getLogger(__name__)

# The minor releases every fast path below was verified on (the whole test suite, images compared
# with raw diffusers): the two ends of pyproject's ranges.
VERIFIED: Mapping[str, tuple[str, ...]] = {"diffusers": ("0.41", "0.42"), "peft": ("0.20", "0.21")}

# Held while a diffusers/peft module global is swapped for one call, so two engines loading in two
# threads cannot interleave their swaps and leave a stale one in place.
DIFFUSERS_PATCH_LOCK = threading.RLock()

_mode: FastPaths | None = None  # None: as the process configuration says


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


@lru_cache(maxsize=1)
def installed_versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in VERIFIED}


@lru_cache(maxsize=1)
def versions_verified() -> bool:
    """Whether the installed diffusers and peft are releases the fast paths were verified on."""
    found = installed_versions()
    ok = all(_minor(found[name]) in minors for name, minors in VERIFIED.items())
    if not ok:
        logger.info(
            "diffusers %s / peft %s are outside the versions loragraph's fast paths were verified on "
            "(%s): using the plain public diffusers/peft paths",
            found["diffusers"], found["peft"], ", ".join(f"{n} {'/'.join(m)}" for n, m in VERIFIED.items()),
        )
    return ok


def configure(mode: FastPaths | None) -> None:
    """Set the fast-path mode for the process ("auto", "on", "off"; None: the configuration's)."""
    global _mode
    if mode not in (None, "auto", "on", "off"):
        raise ValueError(f"fast paths: expected auto, on or off, not {mode!r}")
    _mode = mode


@contextlib.contextmanager
def fast_paths_mode(mode: FastPaths | None) -> Iterator[None]:
    """`configure(mode)` for a block (tests, benchmarks), restoring the previous mode after."""
    previous = _mode
    configure(mode)
    try:
        yield
    finally:
        configure(previous)


def configured_mode() -> FastPaths:
    """The fast-path mode in force: the one `configure` set, else the process configuration's."""
    return _mode or get_config().fast_paths


def fast_paths() -> bool:
    """Whether the fast paths of the topic modules run now (else their public fallbacks)."""
    mode = configured_mode()
    if mode == "off":
        return False
    if mode == "on":
        return True
    return versions_verified()


# The topics' public names, re-exported (after the names above, which the topic modules import).
from .fused_record import set_fused_record  # noqa: E402
from .gemm_merge import merges_by_gemm, record_merged, record_unmerged  # noqa: E402
from .hotswap import hotswap_available, hotswap_through_diffusers, rename_adapter  # noqa: E402
from .loadable import loadable_components, loadable_names  # noqa: E402
from .loading import load_lora_weights, offloading_checked_once  # noqa: E402
from .lycoris import (  # noqa: E402
    forward_conv_attributes,
    lycoris_refusal,
    mark_peft_loaded,
    move_adapter,
    register_norm_layers,
    sgm_module_paths,
)
from .set_adapters import set_adapters  # noqa: E402
from .stacking import others_set_aside, tuner_layers_of  # noqa: E402
from .swap_checks import expansion_checks_answered, offloading_answered, state_dict_walked_once  # noqa: E402

__all__ = [
    "DIFFUSERS_PATCH_LOCK", "VERIFIED", "configure", "configured_mode", "expansion_checks_answered",
    "fast_paths", "fast_paths_mode", "forward_conv_attributes", "hotswap_available",
    "hotswap_through_diffusers", "installed_versions", "load_lora_weights", "loadable_components",
    "loadable_names", "lycoris_refusal", "mark_peft_loaded", "merges_by_gemm", "move_adapter",
    "offloading_answered", "offloading_checked_once", "others_set_aside", "record_merged",
    "record_unmerged", "register_norm_layers", "rename_adapter", "set_adapters", "set_fused_record",
    "sgm_module_paths", "state_dict_walked_once", "tuner_layers_of", "versions_verified",
]
