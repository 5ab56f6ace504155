"""Fence entries, 8: loading next to many adapters, in time that does not grow with them.

Each entry: the private name, the versions verified, what it stands in for and its fallback
(loaders/fence/__init__.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from . import fast_paths

# A set-aside table: the table, its storage as it was (every adapter loaded before), and for a
# ParameterDict its key record as it was.
_Aside = tuple[Any, dict, dict | None]


@contextlib.contextmanager
def others_set_aside(models: Sequence[torch.nn.Module], adapter_name: str) -> Iterator[None]:
    """For the block (one fresh load of `adapter_name`), peft's tuner layers of `models` show no
    other adapter's per-adapter modules or parameters; after it they hold all of them again, in the
    order they would have without this (the adapters loaded before, then the new one).

    Why: peft's `inject_adapter`, `set_peft_model_state_dict` and the walks around them (module and
    parameter walks, `state_dict()`) go over every module and parameter of the model, and each loaded
    adapter adds its own to every layer it targets; the n-th load then costs O(n) and a stack of n
    O(n²) (docs/CONTRACT.md, "Stack growth"). None of that work reads another adapter's tables: the
    new adapter's layers are built and filled from its own config and state dict.
    Private names (torch; peft 0.21 with diffusers 0.41, 0.42, against raw diffusers by
    tests/test_stacking.py; not peft 0.20, whose loads turn the earlier adapters' `requires_grad`
    off, which a set-aside table does not see: there the fallback runs, see `_verified`): each
    per-adapter table's storage, a `ModuleDict`'s `_modules` or a `ParameterDict`'s `_parameters`
    and `_keys`, swapped for an empty one for the block and merged back after (the tables are those
    the layer lists in `adapter_layer_names` and `other_param_names`). The entries keep the flags
    (`requires_grad`, device, dtype) the same load leaves with every adapter in place.
    Stands in for: the same load with every adapter in place.
    Fallback: that: nothing is set aside (the n-th load walks all n adapters' layers).
    """
    if not fast_paths() or not _verified() or not models:
        yield
        return
    layers = [layer for model in models for layer in tuner_layers_of(model)]
    if any(_holds(layer, adapter_name) for layer in layers):  # not a fresh name: as diffusers does
        yield
        return
    aside = [t for layer in layers for t in map(_set_aside, _tables(layer)) if t is not None]
    try:
        yield
    finally:
        for table, storage, keys in aside:
            _put_back(table, storage, keys)


# peft releases the set-aside was checked on against raw diffusers, flags included (a subset of VERIFIED).
PEFT_VERIFIED = ("0.21",)


def _verified() -> bool:
    from . import _minor, configured_mode, installed_versions

    # `fast_paths: on` forces it, as it forces every fast path outside the verified versions
    return configured_mode() == "on" or _minor(installed_versions()["peft"]) in PEFT_VERIFIED


def tuner_layers_of(model: torch.nn.Module) -> list[Any]:
    """The peft tuner layers of `model`, found without walking into any adapter's own modules
    (a layer's per-adapter tables): the walk costs the same however many adapters are loaded."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    found: list[Any] = []
    stack = [model]
    while stack:
        module = stack.pop()
        skip: set[int] = set()
        if isinstance(module, BaseTunerLayer):
            found.append(module)
            skip = {id(t) for t in _tables(module)}
        stack.extend(c for c in reversed(list(module.children())) if id(c) not in skip)
    return found


def _tables(layer: Any) -> list[Any]:
    names = (*getattr(layer, "adapter_layer_names", ()), *getattr(layer, "other_param_names", ()))
    tables = (getattr(layer, n, None) for n in dict.fromkeys(names))
    return [t for t in tables if isinstance(t, (torch.nn.ModuleDict, torch.nn.ParameterDict))]


def _holds(layer: Any, adapter_name: str) -> bool:
    return any(adapter_name in table for table in _tables(layer))


def _set_aside(table: Any) -> _Aside | None:
    if len(table) == 0:
        return None
    if isinstance(table, torch.nn.ModuleDict):
        storage, table._modules = table._modules, type(table._modules)()
        return table, storage, None
    storage, table._parameters = table._parameters, type(table._parameters)()
    keys, table._keys = table._keys, {}
    return table, storage, keys


def _put_back(table: Any, storage: dict, keys: dict | None) -> None:
    if keys is None:
        storage.update(table._modules)  # the new adapter's entries after the others, as peft adds them
        table._modules = storage
        return
    storage.update(table._parameters)
    keys.update(table._keys)
    table._parameters, table._keys = storage, keys
