"""Per-algorithm delta math, as the producer computes it (LyCORIS 4.1 `make_weight`/
`get_diff_weight`): the shape of a module's weight delta, its exact delta where a module is built as
one (DoRA family, LoKr layouts peft cannot hold), and the share of a fused module's delta one
diffusers layer takes (Flux in BFL's names, flux_names.py).

A delta that is layer-sized is `Deferred`: made when its chunk loads (build.py), so a file's full
deltas never all exist at once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .module import DORA, Layer, LycorisError, Module, base_layer


def delta_shape(m: Module) -> tuple[int, int]:
    """(out features, in features x kernel) of the module's weight delta."""
    t = m.tensors
    if m.algorithm in ("lora", "locon", "dora"):
        down, up = t["lora_down.weight"], t["lora_up.weight"]
        k = math.prod(t.get("lora_mid.weight", down).shape[2:])
        return int(up.shape[0]), int(down.shape[1]) * k
    if m.algorithm in ("loha", "doha"):
        if "hada_t1" in t:
            k = math.prod(t["hada_t1"].shape[2:])
            return int(t["hada_w1_a"].shape[1]), int(t["hada_w1_b"].shape[1]) * k
        return int(t["hada_w1_a"].shape[0]), int(t["hada_w1_b"].shape[1])
    if m.algorithm in ("lokr", "dokr"):
        w1 = lokr_w1(t)
        w2o, w2i = _lokr_w2_dims(t)
        return int(w1.shape[0]) * w2o, int(w1.shape[1]) * w2i
    if m.algorithm == "full":
        d = t["diff"]
        return int(d.shape[0]), int(d[0].numel())
    if m.algorithm == "norm":  # a norm layer's 1-D affine weight: (channels, 1) as place() measures it
        return int(t["w_norm"].numel()), 1
    raise LycorisError(f"{m.name}: {m.algorithm} has no delta shape")


def lokr_w1(t: Mapping[str, torch.Tensor]) -> torch.Tensor:
    if "lokr_w1" in t:
        return t["lokr_w1"]
    return t["lokr_w1_a"].float() @ t["lokr_w1_b"].float()


def _lokr_w2_dims(t: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """(out rows, in columns x kernel) of lokr_w2."""
    if "lokr_w2" in t:
        w2 = t["lokr_w2"]
        return int(w2.shape[0]), int(w2[0].numel())
    if "lokr_t2" in t:
        k = math.prod(t["lokr_t2"].shape[2:])
        return int(t["lokr_w2_a"].shape[1]), int(t["lokr_w2_b"].shape[1]) * k
    return int(t["lokr_w2_a"].shape[0]), int(t["lokr_w2_b"].shape[1])


def lokr_w2_full(t: Mapping[str, torch.Tensor], out_k: int, in_n: int, base: Layer) -> torch.Tensor:
    if "lokr_w2" in t:
        return t["lokr_w2"]
    a, b = t["lokr_w2_a"].float(), t["lokr_w2_b"].float()
    if "lokr_t2" in t:
        return torch.einsum("ijkl,jr,ip->prkl", t["lokr_t2"].float(), b, a)
    w2 = a @ b
    return w2.reshape(out_k, in_n, *base.weight.shape[2:]) if base.weight.ndim == 4 else w2


def dora_axis(m: Module) -> str | None:
    """Which axis the module's `dora_scale` normalises along, told apart as LyCORIS writes them.

    'out': one magnitude per output row, shape (out, 1[, 1, 1]) (LyCORIS `wd_on_out`, its default,
    and peft's axis); 'in': one per input column, shape (1, in[, 1, 1]) (older LyCORIS files);
    None when the shape is neither, or does not fit the module's delta.
    """
    scale = m.tensors["dora_scale"]
    out, inner = delta_shape(m)
    if scale.ndim >= 1 and scale.shape[0] == out and scale.numel() == out:
        return "out"
    per_column = scale.ndim >= 2 and scale.shape[0] == 1 and scale.numel() == scale.shape[1]
    if per_column and inner % scale.shape[1] == 0:
        return "in"
    return None


def lokr_scale(t: Mapping[str, torch.Tensor], alpha: float | None) -> float:
    """LyCORIS's scale for a LoKr module rebuilt from weights: alpha / the rank of its low-rank half,
    1 when both halves are full matrices (LyCORIS then ignores alpha)."""
    if "lokr_w1_a" in t:
        rank = int(t["lokr_w1_a"].shape[1])
    elif "lokr_w2_a" in t:
        rank = int(t["lokr_t2"].shape[0]) if "lokr_t2" in t else int(t["lokr_w2_a"].shape[1])
    else:
        return 1.0
    a = alpha if alpha else rank
    return a / rank


def rank_scale(m: Module) -> float:
    """alpha / rank; LyCORIS and kohya take a missing (or 0) alpha as alpha = rank."""
    alpha = m.alpha
    return 1.0 if not alpha else alpha / m.rank


def fold_mid(t: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The down kernel of a Tucker LoCon (down 1x1, mid kxk): one kxk conv from in to rank."""
    down, mid = t["lora_down.weight"], t["lora_mid.weight"]
    return torch.einsum("jkhw,ki->jihw", mid.float(), down.float().flatten(1)).to(down.dtype)


def _low_rank_delta(m: Module, base: Layer) -> torch.Tensor:
    """The module's exact weight delta at multiplier 1 (alpha/rank applied), float32, the layer's
    shape.

    The producer's arithmetic (LyCORIS 4.1 `make_weight`/`get_diff_weight`): LoRA up @ down (a
    Tucker mid folded into down), LoHa (w1a @ w1b) * (w2a @ w2b) (Tucker: each factor through its
    core), LoKr kron(w1, w2). Only the DoRA family needs it: its normalisation is over the patched
    weight.
    """
    t = {k: v.float() for k, v in m.tensors.items()}
    shape = base.weight.shape
    algorithm = DORA.get(m.algorithm, m.algorithm)
    if algorithm == "lora":
        down = fold_mid(t) if "lora_mid.weight" in t else t["lora_down.weight"]
        delta = t["lora_up.weight"].flatten(1) @ down.flatten(1)
        return (delta * rank_scale(m)).reshape(shape)
    if algorithm == "loha":
        if "hada_t1" in t:
            w1 = torch.einsum("ijkl,jr,ip->prkl", t["hada_t1"], t["hada_w1_b"], t["hada_w1_a"])
            w2 = torch.einsum("ijkl,jr,ip->prkl", t["hada_t2"], t["hada_w2_b"], t["hada_w2_a"])
        else:
            w1, w2 = t["hada_w1_a"] @ t["hada_w1_b"], t["hada_w2_a"] @ t["hada_w2_b"]
        return (w1 * w2 * rank_scale(m)).reshape(shape)
    if algorithm == "lokr":
        return lokr_delta(m, base)
    raise LycorisError(f"{m.name}: {m.algorithm} has no low-rank delta")


def lokr_delta(m: Module, base: Layer) -> torch.Tensor:
    """kron(w1, w2) * LyCORIS's LoKr scale, float32, in the layer's weight shape."""
    t = m.tensors
    w1 = lokr_w1(t).float()
    shape = base.weight.shape
    w2 = lokr_w2_full(t, int(shape[0]) // w1.shape[0], int(shape[1]) // w1.shape[1], base).float()
    w1_nd = w1.reshape(*w1.shape, *[1] * (w2.ndim - w1.ndim))  # kron pairs axes from the left
    return (torch.kron(w1_nd, w2) * lokr_scale(t, m.alpha)).reshape(shape)


def dora_delta(m: Module, base: Layer) -> torch.Tensor:
    """A DoRA-family module as one full delta: W0 + strength * (W_dora - W0) is docs/CONTRACT.md's
    "scale the whole delta" at every strength (peft's DoRA rescales inside the norm instead, so it
    cannot).

    W_dora is the producer's (LyCORIS `weight_decompose`): the patched weight W0 + dW, normalised
    per output row (or per input column, by the file's `dora_scale` shape) plus float eps, times
    `dora_scale`. W0 is the layer's weight at load time: the engine loads only onto unfused weights.
    """
    w0 = base.weight.detach().float()
    patched = w0 + _low_rank_delta(m, base).to(w0.device)
    magnitude = m.tensors["dora_scale"].detach().float().to(w0.device)
    rest = [1] * (patched.dim() - 1)
    if dora_axis(m) == "out":
        norm = patched.reshape(patched.shape[0], -1).norm(dim=1).reshape(patched.shape[0], *rest)
    else:
        columns = patched.transpose(0, 1)
        norm = columns.reshape(patched.shape[1], -1).norm(dim=1).reshape(patched.shape[1], *rest)
        norm = norm.transpose(0, 1)
    norm = norm + torch.finfo(patched.dtype).eps
    return (patched * (magnitude.reshape(norm.shape) / norm) - w0).to(base.weight.dtype)


@dataclasses.dataclass(frozen=True)
class Deferred:
    """A tensor made only when its chunk is loaded: a DoRA module's full delta (layer-sized)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    make: Any  # () -> torch.Tensor

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


# --------------------------------------------------------------------------------------------------
# Shares of a fused module (Flux in BFL's names)


class LastDelta:
    """The last fused module's full delta, so its 3-4 shares compute it once, not once each; one slot,
    since a module's shares load one after another (memory: one fused delta)."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.delta: torch.Tensor | None = None

    def get(self, name: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        if self.name != name:
            self.name, self.delta = None, None  # the previous one goes before the next is made
            self.delta, self.name = compute(), name
        assert self.delta is not None  # made with its name
        return self.delta


def take_rows(m: Module, fused: Any = None, memo: LastDelta | None = None) -> tuple[Module, bool]:
    """The share `m.rows` of a fused module's delta, as a module of its own (Flux in BFL's names), and
    whether it holds a LoKr share's full delta. `fused`: () -> the fused layer's weight (DoRA family);
    `memo`: where a full fused delta is kept for the module's other shares.

    Exact in every case, and linear in the adapter's weight, since each share is a slice of the delta:
    - LoRA/LoCon: the rows of lora_up; stays low-rank at the file's rank;
    - LoHa: (w1_a w1_b) * (w2_a w2_b) elementwise, so a row of the delta takes that row of w1_a and w2_a;
    - full: the rows of diff (and diff_b);
    - LoKr: kron(w1, w2) repeats w2 per row of w1, so ranges on whole multiples of w2's rows are
      ranges of w1's rows; other ranges (the usual case) take the exact delta's rows as w2 under a 1x1
      w1 = 1: peft's LoKr then holds the full delta itself, without the identity factor of a `diff`
      (build.py's `_full_entries`), so it costs the delta's memory once.
    - DoRA family: normalised over the fused layer's patched weight (per output row or, by its
      dora_scale's shape, per input column, which spans every share), so its exact full delta is
      computed on the fused weight, put back together from the layers (`fused`), and split.
    """
    rows = m.rows
    if rows is None:
        return m, False
    t = dict(m.tensors)
    index = _rows_index(rows)
    memo = memo or LastDelta()
    if m.algorithm in DORA:
        shape = (len(index), delta_shape(m)[1])

        def make() -> torch.Tensor:  # when its chunk loads (build.load), as every DoRA delta
            return memo.get(m.name, lambda: dora_delta(m, _FusedLayer(fused())))[index]

        # the Deferred stands in for the diff tensor until its chunk loads
        diff: Any = Deferred(shape, next(iter(t.values())).dtype, make)
        return dataclasses.replace(m, algorithm="full", tensors={"diff": diff}, rows=None), False

    def pick(x: torch.Tensor, unit: int = 1) -> torch.Tensor:
        return torch.cat([x[a // unit : b // unit] for a, b in rows])

    if m.algorithm in ("lora", "locon"):
        t["lora_up.weight"] = pick(t["lora_up.weight"])
    elif m.algorithm == "loha":
        t["hada_w1_a"], t["hada_w2_a"] = pick(t["hada_w1_a"]), pick(t["hada_w2_a"])
    elif m.algorithm == "full":
        t["diff"] = pick(t["diff"])
        if "diff_b" in t:
            t["diff_b"] = pick(t["diff_b"])
    elif m.algorithm == "lokr":
        unit = _lokr_w2_dims(t)[0]
        if all(a % unit == 0 and b % unit == 0 for a, b in rows):
            w1 = "lokr_w1" if "lokr_w1" in t else "lokr_w1_a"
            t[w1] = pick(t[w1], unit)
        else:
            out, inner = delta_shape(m)
            dtype = next(iter(t.values())).dtype

            # made when its chunk loads (build.load): a full-size Flux file's shares
            def make() -> torch.Tensor:
                stand_in = _FusedLayer(torch.empty(out, inner, device="meta"))
                return pick(memo.get(m.name, lambda: lokr_delta(m, stand_in)))  # never all at once

            w2: Any = Deferred((len(index), inner), dtype, make)  # stands in for lokr_w2 until it loads
            whole = {"lokr_w1": torch.ones(1, 1, dtype=dtype), "lokr_w2": w2}  # no alpha: scale 1
            return dataclasses.replace(m, tensors=whole, rows=None), True
    else:
        raise LycorisError(f"{m.name}: {m.algorithm} cannot be split across fused layers")
    return dataclasses.replace(m, tensors=t, rows=None), False


@dataclasses.dataclass(frozen=True)
class _FusedLayer:
    """Stand-in for the one layer BFL has where diffusers has several: a weight of the fused shape."""

    weight: torch.Tensor


def _rows_index(rows: tuple[tuple[int, int], ...]) -> torch.Tensor:
    return torch.cat([torch.arange(a, b) for a, b in rows])


def fused_weight(
    model: torch.nn.Module, shares: list[tuple[tuple[tuple[int, int], ...], str]]
) -> torch.Tensor:
    """The weight of the fused layer whose rows `shares` [(rows, diffusers path)] put in diffusers'
    layers."""
    weights = [
        (_rows_index(rows), base_layer(model.get_submodule(p)).weight.detach()) for rows, p in shares
    ]
    w0 = weights[0][1]
    fused = torch.empty(sum(len(i) for i, _ in weights), *w0.shape[1:], dtype=w0.dtype, device=w0.device)
    for index, w in weights:
        fused[index.to(w.device)] = w
    return fused
