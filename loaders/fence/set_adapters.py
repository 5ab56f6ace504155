"""Fence entries, 7: set_adapters, layer by layer.

Each entry: the private name, the versions verified, what it stands in for and its fallback
(loaders/fence/__init__.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from . import (
    fast_paths,
)

logger = logging.getLogger(__name__)

def _plain_weights(weights: Sequence[Any]) -> bool:
    values = [x for w in weights for x in (w.values() if isinstance(w, Mapping) else [w])]
    return all(isinstance(x, (int, float)) for x in values)


def set_adapters(
    pipe: Any, layers: Callable[[str], Iterable[tuple[str, Any]]], components: Sequence[str],
    names: Sequence[str], weights: Sequence[Any], same_names: bool = False,
) -> None:
    """`pipe.set_adapters(names, weights)`, straight on the tuner layers the engine lists once per
    load (`layers(component)`), for plain weights: a number per adapter, or a number per component.

    diffusers' `set_adapters` hands every component all the names, walks every module of each and
    calls peft's `set_adapter(names)` and `set_scale(name, weight)` on every tuner layer; a
    component an adapter's dict leaves out runs at 1.0. Here the same two calls go to the listed
    layers, without the walk, and `set_adapter` is skipped when the names are those of the last call
    (`same_names`): only the scales change.
    Relies on (diffusers 0.41, 0.42; peft 0.20, 0.21): `set_adapters`' work per tuner layer being
    those two public peft calls (diffusers' `set_weights_and_activate_adapters`).
    Stands in for: `pipe.set_adapters(names, weights)`.
    Fallback: that call, for weights that are not plain (per-block ones) too, each adapter's dict
    limited to the components it has (diffusers warns about the others and runs them at 1.0).
    """
    if fast_paths() and _plain_weights(weights):
        for comp in components:
            for _, module in layers(comp):
                if not same_names:
                    module.set_adapter(list(names))
                for name, value in zip(names, weights, strict=True):
                    module.set_scale(name, value.get(comp, 1.0) if isinstance(value, Mapping) else value)
        return
    present = pipe.get_list_adapters()
    call = [
        {c: v for c, v in w.items() if name in present.get(c, ())} if isinstance(w, Mapping) else w
        for name, w in zip(names, weights, strict=True)
    ]
    pipe.set_adapters(list(names), call)
