"""What a job needs, read from its workflow before it runs: the base pipelines and the LoRA files.

A base is the LoadPipeline inputs as written (``model|dtype|device``); a LoRA file is its content
hash (sha256), so the same file under two names, or on two machines, is one LoRA. Inputs fed by a
link, or files that do not resolve, are left out: such a job is routed on what is known, and fails
on its own input where it runs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Needs:
    bases: frozenset[str] = field(default_factory=frozenset)
    adapters: frozenset[str] = field(default_factory=frozenset)  # sha256 of LoRA files


def base_key(model: Any, dtype: Any = "auto", device: Any = "auto") -> str:
    return f"{model}|{dtype or 'auto'}|{device or 'auto'}"


def job_needs(prompt: Mapping[str, Any]) -> Needs:
    """The bases and LoRA files a workflow loads (literal inputs only)."""
    from .. import host
    from ..loaders import store

    bases: set[str] = set()
    adapters: set[str] = set()
    for node in prompt.values():
        inputs = node.get("inputs") or {}
        if node.get("class_type") == "LoadPipeline" and isinstance(inputs.get("model"), str):
            bases.add(base_key(inputs["model"], inputs.get("dtype"), inputs.get("device")))
        name = inputs.get("lora_name")
        if isinstance(name, str) and name:
            try:
                adapters.add(store.file_sha256(host.resolve_in("loras", name)))
            except (OSError, ValueError):
                logger.debug("lora_name %r does not resolve here; routed without it", name)
    return Needs(frozenset(bases), frozenset(adapters))
