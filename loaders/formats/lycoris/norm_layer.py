"""`NormDelta`: the peft tuner layer for norm-layer diffs (`w_norm`/`b_norm`); see norms.py."""

from __future__ import annotations

import warnings
from typing import Any, cast

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import LoraLayer
from peft.tuners.tuners_utils import check_adapters_to_merge

from .norms import TABLE


class NormDelta(torch.nn.Module, LoraLayer):
    """A norm layer plus per-adapter diffs of its affine weight and bias, scaled by the adapter's weight."""

    adapter_layer_names = (TABLE, "lora_norm_bias")
    other_param_names = ("r", "lora_alpha", "scaling")

    def __init__(self, base_layer: torch.nn.Module, adapter_name: str, **kwargs: Any) -> None:
        super().__init__()
        with warnings.catch_warnings():  # peft warns that it cannot size a norm layer's in/out features
            warnings.filterwarnings("ignore", message="Unsupported layer type")
            LoraLayer.__init__(self, base_layer)
        self.lora_norm_weight = torch.nn.ParameterDict({})
        self.lora_norm_bias = torch.nn.ParameterDict({})
        self.update_layer(adapter_name)
        self.set_adapter(adapter_name)

    def _norm(self) -> torch.nn.LayerNorm | torch.nn.GroupNorm:
        """The norm layer this one wraps."""
        # cast: peft builds this layer for NORM_TYPES only (fence.register_norm_layers)
        return cast("torch.nn.LayerNorm | torch.nn.GroupNorm", self.get_base_layer())

    # --- peft's layer API ----------------------------------------------------------------------------

    def update_layer(self, adapter_name: str, *args: Any, **kwargs: Any) -> None:
        """A new adapter, its diffs zero (filled by `set_diffs`); r = alpha = 1, so scaling = weight."""
        base = self._norm()
        w = base.weight
        self.lora_norm_weight[adapter_name] = torch.nn.Parameter(torch.zeros_like(w), requires_grad=False)
        if getattr(base, "bias", None) is not None:
            zeros = torch.zeros_like(base.bias)
            self.lora_norm_bias[adapter_name] = torch.nn.Parameter(zeros, requires_grad=False)
        self.r[adapter_name] = 1
        self.lora_alpha[adapter_name] = 1
        self.scaling[adapter_name] = 1.0

    def set_diffs(self, adapter_name: str, w_norm: torch.Tensor, b_norm: torch.Tensor | None) -> None:
        with torch.no_grad():
            target = self.lora_norm_weight[adapter_name]
            target.copy_(w_norm.reshape(target.shape))
            if b_norm is not None:
                target = self.lora_norm_bias[adapter_name]
                target.copy_(b_norm.reshape(target.shape))

    def set_scale(self, adapter: str, scale: float) -> None:
        if adapter in self.scaling:
            self.scaling[adapter] = scale

    def scale_layer(self, scale: float) -> None:
        for a in self.active_adapters:
            if a in self.scaling:
                self.scaling[a] *= scale

    def unscale_layer(self, scale: float | None = None) -> None:
        for a in self.active_adapters:
            if a in self.scaling:
                self.scaling[a] = 1.0 if scale is None else self.scaling[a] / scale

    def _diffs(self, adapters: list[str], dtype: torch.dtype, device: torch.device):
        w = b = None
        for a in adapters:
            if a not in self.lora_norm_weight:
                continue
            s = self.scaling[a]
            dw = self.lora_norm_weight[a].to(device, dtype) * s
            w = dw if w is None else w + dw
            if a in self.lora_norm_bias:
                db = self.lora_norm_bias[a].to(device, dtype) * s
                b = db if b is None else b + db
        return w, b

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        base = self._norm()
        for a in check_adapters_to_merge(self, adapter_names):
            if a not in self.lora_norm_weight:
                continue
            dw, db = self._diffs([a], torch.float32, base.weight.device)
            weight = (base.weight.data.float() + dw).to(base.weight.dtype)
            bias = None if db is None else (base.bias.data.float() + db).to(base.bias.dtype)
            if safe_merge and not (
                torch.isfinite(weight).all() and (bias is None or torch.isfinite(bias).all())
            ):
                raise ValueError(f"NaNs detected in the merged weights. The adapter {a} seems to be broken")
            base.weight.data = weight  # new tensors: the engine's backup keeps the originals untouched
            if bias is not None:
                base.bias.data = bias
            self.merged_adapters.append(a)

    def unmerge(self) -> None:
        base = self._norm()
        while self.merged_adapters:
            a = self.merged_adapters.pop()
            dw, db = self._diffs([a], torch.float32, base.weight.device)
            base.weight.data = (base.weight.data.float() - dw).to(base.weight.dtype)
            if db is not None:
                base.bias.data = (base.bias.data.float() - db).to(base.bias.dtype)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:  # as peft's LoRA layers: a merged layer runs its base layer only
            return result
        w, b = self._diffs(list(self.active_adapters), x.dtype, x.device)
        if w is None:
            return result
        base = self._norm()
        if isinstance(base, torch.nn.GroupNorm):
            return result + F.group_norm(x, base.num_groups, w, b, base.eps)
        return result + F.layer_norm(x, base.normalized_shape, w, b, base.eps)
