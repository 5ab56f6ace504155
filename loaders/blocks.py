"""Per-block weights for transformer denoisers (SD3, Flux): diffusers offers block scales only on
UNets (its maintainers declined the rest: https://github.com/huggingface/diffusers/issues/4017), so
here they are set per peft layer.

Form (SetAdapterWeights' `block_weights`, per adapter): `{"transformer": {"transformer_blocks":
{"0": 0.5, "3": 1.2} | [w0, w1, ...], "single_transformer_blocks": {...}}}`; Flux's names `double`
and `single` are accepted for the two kinds; a bare dict of those keys means the denoiser. As with
diffusers' UNet block weights, layers in no listed block (and blocks not listed) keep weight 1.0.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

KINDS = {"transformer_blocks": "transformer_blocks", "double": "transformer_blocks",
         "single_transformer_blocks": "single_transformer_blocks", "single": "single_transformer_blocks"}
_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.")


def is_transformer_blocks(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and set(value) <= set(KINDS)


def normalise(value: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """{kind: {index: weight}} with canonical kind names; ValueError says what is wrong."""
    out: dict[str, dict[str, float]] = {}
    for kind, per in value.items():
        if kind not in KINDS:
            raise ValueError(f"unknown block kind {kind!r}; transformer blocks are {sorted(KINDS)}")
        if isinstance(per, list):
            per = {str(i): w for i, w in enumerate(per)}
        if not isinstance(per, dict):  # ValueError, not TypeError: one error type for bad JSON input
            raise ValueError(f"{kind}: expected {{index: weight}} or a list of weights, got {per!r}")
        for i, w in per.items():
            if not str(i).isdigit() or isinstance(w, bool) or not isinstance(w, (int, float)):
                raise ValueError(f"{kind}: expected block index -> number, got {i!r}: {w!r}")
        out.setdefault(KINDS[kind], {}).update({str(int(i)): float(w) for i, w in per.items()})
    return out


def weight_for(blocks: Mapping[str, Mapping[str, float]], module_name: str) -> float:
    m = _BLOCK.match(module_name)
    if m is None:
        return 1.0
    return float(blocks.get(m.group(1), {}).get(m.group(2), 1.0))
