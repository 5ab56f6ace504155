"""``--sweep NODE_ID.INPUT=V1,V2,...``: one workflow run over a grid of input values.

A value list that starts with ``[`` is a JSON array instead, one run per element, for values that
hold commas themselves (``--sweep '4.weights=["1.0, 0.8", "0.5, 0.8"]'``).

Each ``--sweep`` names one input and its values; the runs are the cartesian product, the first
``--sweep`` varying slowest (as nested loops written in the order given). A value is parsed as
``--set`` parses one (JSON, else the string), and ``A-B`` with two integers is the inclusive range.
Each run is the workflow with ``--set NODE_ID.INPUT=V`` for its values, so every check ``--set``
makes (the node exists, the class declares the input) applies to a sweep too.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..base import limits
from ..graph import WorkflowError, apply_overrides, parse_override_value

_RANGE = re.compile(r"^\s*(-?\d+)\s*-\s*(-?\d+)\s*$")
# A grid past this is almost surely a typo in a range (1-100000).
MAX_RUNS = 100_000


@dataclass(frozen=True)
class Axis:
    """One ``--sweep``: ``target`` is ``NODE_ID.INPUT``, ``values`` the raw value texts in order."""

    target: str
    values: tuple[str, ...]


def parse_sweep(item: str) -> Axis:
    """Parse one ``--sweep`` argument; a malformed one is a WorkflowError naming it."""
    target, sep, raw = item.partition("=")
    node_id, dot, input_name = target.strip().partition(".")
    if not sep or not dot or not node_id or not input_name:
        raise WorkflowError(f"--sweep {item!r}: expected NODE_ID.INPUT=V1,V2,... (e.g. 6.seed=1-8)")
    if raw.lstrip().startswith("["):
        return Axis(f"{node_id.strip()}.{input_name.strip()}", _json_values(item, raw))
    values: list[str] = []
    for part in raw.split(","):
        text = part.strip()
        if not text:
            raise WorkflowError(f"--sweep {item!r}: an empty value (two commas, or one at an end)")
        match = _RANGE.match(text)
        if match:
            first, last = int(match.group(1)), int(match.group(2))
            if last < first:
                raise WorkflowError(f"--sweep {item!r}: the range {text!r} runs backwards ({first} > {last})")
            if last - first >= MAX_RUNS:
                raise WorkflowError(f"--sweep {item!r}: the range {text!r} has over {MAX_RUNS} values")
            values.extend(str(v) for v in range(first, last + 1))
        else:
            values.append(text)
    return Axis(f"{node_id.strip()}.{input_name.strip()}", tuple(values))


def _json_values(item: str, raw: str) -> tuple[str, ...]:
    """``[...]``: a JSON array, one run per element; each element becomes the ``--set`` text that
    parses back to it (a string stays a string: "1.0, 0.8" is one value, commas and all)."""
    try:
        parsed = limits.loads(raw)
    except ValueError as e:
        raise WorkflowError(
            f"--sweep {item!r}: a value list starting with '[' must be a JSON array ({e})") from None
    if not isinstance(parsed, list) or not parsed:
        raise WorkflowError(f"--sweep {item!r}: the JSON array holds no values")
    if len(parsed) > MAX_RUNS:
        raise WorkflowError(f"--sweep {item!r}: over {MAX_RUNS} values")
    # a string that would parse as JSON ("5") must stay a string: give it JSON-quoted
    return tuple(v if isinstance(v, str) and parse_override_value(v) == v else json.dumps(v) for v in parsed)


def parse_sweeps(items: Sequence[str]) -> list[Axis]:
    """Parse every ``--sweep``; the same input swept twice is an error (its runs would collide)."""
    axes = [parse_sweep(item) for item in items]
    seen: set[str] = set()
    for axis in axes:
        if axis.target in seen:
            raise WorkflowError(f"--sweep {axis.target}: swept twice; give all its values in one --sweep")
        seen.add(axis.target)
    total = 1
    for axis in axes:
        total *= len(axis.values)
    if total > MAX_RUNS:
        raise WorkflowError(f"--sweep: {total} runs is more than {MAX_RUNS}")
    return axes


@dataclass(frozen=True)
class SweepRun:
    """One point of the grid: its ``--set`` items and the values as ``--json``'s ``"set"`` shows them."""

    overrides: tuple[str, ...]
    values: dict[str, Any]

    def label(self) -> str:
        """``6.seed=1, 2.strength=0.5``: how the summary names the run."""
        return ", ".join(self.overrides)


def iter_grid(axes: Sequence[Axis]) -> Iterator[SweepRun]:
    """The cartesian product in run order, the first axis varying slowest, one point at a time:
    a 100,000-run sweep starts its first run at once and never holds more than the current one."""
    for combo in itertools.product(*(axis.values for axis in axes)):
        overrides = tuple(f"{axis.target}={value}" for axis, value in zip(axes, combo, strict=True))
        values = {axis.target: parse_override_value(value) for axis, value in zip(axes, combo, strict=True)}
        yield SweepRun(overrides, values)


def grid(axes: Sequence[Axis]) -> list[SweepRun]:
    """Every point of ``iter_grid``, as a list."""
    return list(iter_grid(axes))


def check_axes(prompt: Mapping[str, Any], axes: Sequence[Axis], registry: Mapping[str, type] | None) -> None:
    """Each axis names a node of the workflow and an input its class declares (as ``--set`` checks)."""
    for axis in axes:
        try:
            apply_overrides(prompt, [f"{axis.target}={axis.values[0]}"], registry)
        except WorkflowError as ex:
            raise WorkflowError(str(ex).replace("--set ", "--sweep ", 1)) from None
