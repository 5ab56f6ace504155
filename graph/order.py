"""Which nodes run, and in what order.

Only ancestors of output nodes run (a node nobody looks at is wasted work), and among the nodes
that are ready at the same time the one with the smallest id goes first, so a workflow runs in the
same order every time - logs, progress bars and tests can rely on it.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from .errors import CycleError
from .node_defs import NodeClass
from .workflow import is_link, node_sort_key

Prompt = Mapping[str, Mapping[str, Any]]


def iter_links(node: Mapping[str, Any]) -> Iterator[tuple[str, str, int]]:
    """Yield ``(input_name, source_node_id, output_index)`` for each linked input of a node."""
    for name, value in (node.get("inputs") or {}).items():
        if is_link(value):
            yield name, value[0], int(value[1])


def output_nodes(prompt: Prompt, registry: Mapping[str, NodeClass]) -> list[str]:
    """Ids of nodes whose class sets ``OUTPUT_NODE = True``, in id order."""
    found = []
    for node_id, node in prompt.items():
        class_def = registry.get(node.get("class_type"))  # type: ignore[arg-type]
        if class_def is not None and getattr(class_def, "OUTPUT_NODE", False) is True:
            found.append(node_id)
    return sorted(found, key=node_sort_key)


def ancestors(
    prompt: Prompt, roots: Iterable[str], stop: Callable[[str], bool] | None = None
) -> set[str]:
    """The roots plus every node they (transitively) take inputs from.

    ``stop(node_id)`` returning True keeps the node but does not walk past it: a node served from
    the cache does not need its own inputs, so they need not run. Links to ids that are not in the
    prompt are ignored here; validation reports them.
    """
    seen: set[str] = set()
    stack = [r for r in roots if r in prompt]
    while stack:
        node_id = stack.pop()
        if node_id in seen:
            continue
        seen.add(node_id)
        if stop is not None and stop(node_id):
            continue
        for _, src, _ in iter_links(prompt[node_id]):
            if src in prompt and src not in seen:
                stack.append(src)
    return seen


def topological_order(prompt: Prompt, node_ids: Iterable[str]) -> list[str]:
    """Order ``node_ids`` so every node comes after the nodes it links from.

    Kahn's algorithm with a heap keyed by ``node_sort_key`` for a deterministic order. Links to
    nodes outside ``node_ids`` are treated as already satisfied. Raises ``CycleError`` naming the
    nodes of one cycle when the links loop.
    """
    wanted = set(node_ids)
    pending: dict[str, int] = {}
    consumers: dict[str, list[str]] = {n: [] for n in wanted}
    for node_id in wanted:
        sources = {src for _, src, _ in iter_links(prompt[node_id]) if src in wanted}
        pending[node_id] = len(sources)
        for src in sources:
            consumers[src].append(node_id)

    ready = [(node_sort_key(n), n) for n, count in pending.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, node_id = heapq.heappop(ready)
        order.append(node_id)
        for consumer in consumers[node_id]:
            pending[consumer] -= 1
            if pending[consumer] == 0:
                heapq.heappush(ready, (node_sort_key(consumer), consumer))

    if len(order) != len(wanted):
        stuck = {n for n, count in pending.items() if count > 0}
        raise CycleError(find_cycle(prompt, stuck), _class_types(prompt))
    return order


def find_cycle(prompt: Prompt, candidates: set[str]) -> list[str]:
    """Return one cycle among ``candidates`` as ``[a, b, ..., a]`` (a follows links to b).

    ``candidates`` are nodes Kahn's algorithm could not schedule; each of them either lies on a
    cycle or depends on one, so walking input links from any of them must revisit a node.
    """
    start = min(candidates, key=node_sort_key)
    path: list[str] = []
    index: dict[str, int] = {}
    node_id = start
    while node_id not in index:
        index[node_id] = len(path)
        path.append(node_id)
        sources = sorted(
            (src for _, src, _ in iter_links(prompt[node_id]) if src in candidates), key=node_sort_key
        )
        node_id = sources[0]
    cycle = [*path[index[node_id]:], node_id]
    # We walked against the links (consumer -> source); show it in data-flow order.
    cycle.reverse()
    return cycle


def execution_order(
    prompt: Prompt, outputs: Iterable[str], is_cached: Callable[[str], bool] | None = None
) -> list[str]:
    """The nodes to visit for ``outputs``, in run order.

    With ``is_cached`` the walk stops at cached nodes, so their inputs are not recomputed; the
    cached nodes themselves stay in the list (the executor serves them from the cache).
    """
    return topological_order(prompt, ancestors(prompt, outputs, stop=is_cached))


def _class_types(prompt: Prompt) -> dict[str, str]:
    return {n: str(node.get("class_type")) for n, node in prompt.items()}
