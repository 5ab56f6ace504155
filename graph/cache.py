"""Node output cache keyed by input signature (ComfyUI's ``CacheKeySetInputSignature``).

A node's signature covers everything its output can depend on: its class, its constant inputs,
the signatures of the nodes it links from (so a change anywhere upstream changes every signature
downstream) and its ``IS_CHANGED`` value (file-loading nodes return the file's content hash).
A node whose IS_CHANGED is NaN - or fails, or is not JSON - has no signature: it and everything
downstream of it run every time, as in ComfyUI.

Signatures are Merkle-style SHA-256 digests, each built from its parents' digests, so computing
them is linear in the graph even where many paths share ancestors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .node_defs import NodeClass, function_params, get_input_info, hidden_values
from .workflow import is_link

logger = logging.getLogger(__name__)

# Keep outputs used by the last 8 prompts: enough for `run A.json B.json ...` batches and a server
# user flipping between a few variants, while outputs (handles, IMAGE tensors) stay small.
DEFAULT_CACHE_PROMPTS = 8


@dataclass(frozen=True)
class CacheEntry:
    """A node's result: its output tuple and what it shows in the UI (None if nothing)."""

    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None


class OutputCache:
    """Signature -> ``CacheEntry``, keeping what the last ``max_prompts`` prompts used.

    Lives on the Executor, so a re-run of a workflow (or a similar one) redoes only what changed.
    Eviction is by prompt generation rather than by entry count because one prompt's entries are
    needed together: evicting half a graph's entries saves little and forces re-running the rest.
    """

    def __init__(self, max_prompts: int = DEFAULT_CACHE_PROMPTS) -> None:
        if max_prompts < 1:
            raise ValueError("max_prompts must be >= 1")
        self.max_prompts = max_prompts
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._generations: deque[frozenset[str]] = deque(maxlen=max_prompts)

    def get(self, signature: str | None) -> CacheEntry | None:
        """The entry for ``signature``; None for a miss or an uncacheable (None) signature."""
        if signature is None:
            return None
        return self._entries.get(signature)

    def set(self, signature: str | None, entry: CacheEntry) -> None:
        """Store ``entry``; uncacheable (None) signatures are ignored."""
        if signature is not None:
            self._entries[signature] = entry
            self._entries.move_to_end(signature)

    def end_prompt(self, used: Iterable[str | None]) -> None:
        """Record the signatures a finished prompt used and drop entries no recent prompt used."""
        self._generations.append(frozenset(s for s in used if s is not None))
        keep = frozenset().union(*self._generations)
        for signature in [s for s in self._entries if s not in keep]:
            del self._entries[signature]

    def clear(self) -> None:
        """Forget every cached output (e.g. after the engine dropped its pipelines)."""
        self._entries.clear()
        self._generations.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, signature: object) -> bool:
        return signature in self._entries


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return {"__bytes__": bytes(value).hex()}
    if isinstance(value, (set, frozenset)):
        raise TypeError("sets have no stable order")
    raise TypeError(f"{type(value).__name__} is not part of a cacheable signature")


def _canonical(value: Any) -> str:
    # allow_nan=False: NaN anywhere means "never equal", so it must make the node uncacheable
    # rather than serialise to a string that would compare equal next time.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False, default=_json_default)


def is_changed_value(
    class_def: NodeClass, node_id: str, inputs: Mapping[str, Any], input_types: Mapping[str, Any]
) -> Any:
    """Call the class's ``IS_CHANGED`` the way ComfyUI does; False when it has none.

    It gets the constant inputs, None for linked ones (their values do not exist yet) and the
    hidden inputs; parameters it does not name are left out unless it takes ``**kwargs``. An
    exception is logged and turned into NaN (never cache), ComfyUI's behaviour.
    """
    func = getattr(class_def, "IS_CHANGED", None)
    if func is None:
        return False
    kwargs: dict[str, Any] = {}
    for name, value in inputs.items():
        _, category, _ = get_input_info(input_types, name)
        if is_link(value):
            kwargs[name] = None
        elif category is not None:
            kwargs[name] = value
    kwargs.update(hidden_values(input_types, node_id, None, None))
    params, has_kwargs = function_params(func)
    if not has_kwargs:
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    try:
        return func(**kwargs)
    except Exception as ex:  # ComfyUI: any IS_CHANGED failure means "re-run", not a crash
        logger.warning("IS_CHANGED of node %s (%s) failed, it will re-run: %s",
                       node_id, class_def.__name__, ex)
        return float("nan")


def node_signatures(
    prompt: Mapping[str, Mapping[str, Any]],
    order: Iterable[str],
    registry: Mapping[str, NodeClass],
    input_types_of: Callable[[str], Mapping[str, Any]],
) -> dict[str, str | None]:
    """Signature of every node in ``order`` (a topological order: sources before consumers).

    Like ComfyUI, the node id joins the signature when the class reads its ``UNIQUE_ID`` or sets
    ``NOT_IDEMPOTENT``, since then its output may differ between two otherwise identical nodes.
    """
    signatures: dict[str, str | None] = {}
    for node_id in order:
        node = prompt[node_id]
        class_type = node["class_type"]
        class_def = registry[class_type]
        input_types = input_types_of(class_type)
        changed = is_changed_value(class_def, node_id, node["inputs"], input_types)
        signatures[node_id] = _signature(node_id, class_type, class_def, node["inputs"], input_types,
                                         changed, signatures)
    return signatures


def _signature(
    node_id: str,
    class_type: str,
    class_def: NodeClass,
    inputs: Mapping[str, Any],
    input_types: Mapping[str, Any],
    changed: Any,
    parents: Mapping[str, str | None],
) -> str | None:
    if _is_nan(changed):
        return None
    parts: list[Any] = [class_type]
    hidden = input_types.get("hidden") or {}
    kinds = {spec[0] if isinstance(spec, (tuple, list)) and spec else spec for spec in hidden.values()}
    if getattr(class_def, "NOT_IDEMPOTENT", False) or "UNIQUE_ID" in kinds:
        parts.append(["id", node_id])
    items = []
    for name in sorted(inputs):
        value = inputs[name]
        if is_link(value):
            parent = parents.get(value[0])
            if parent is None:
                return None
            items.append([name, "link", parent, value[1]])
        else:
            items.append([name, "value", value])
    parts.append(items)
    try:
        parts.append(["is_changed", changed])
        text = _canonical(parts)
    except (TypeError, ValueError) as ex:
        logger.debug("node %s (%s) is not cacheable: %s", node_id, class_type, ex)
        return None
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
