"""Cross-check loragraph's LyCORIS arithmetic against ComfyUI's weight adapters.

    python tools/comfyui_crosscheck.py --comfyui /path/to/ComfyUI [--work DIR]

Needs a ComfyUI checkout (not a dependency; nothing of it is copied here) and `lycoris-lora` (the
test extra). LyCORIS 4.1.3 writes LoCon-Tucker, LoHa(-Tucker), LoKr, full, DoRA, DoHa, DoKr and
norm-diff (`train_norm`) files on the tiny SD pipeline; loragraph's SaveLoRA writes four of them
back. For each file and strength (1.0, 0.5):
- ComfyUI's `comfy.lora.load_lora` must take every key ("not loaded" count);
- for every module, ComfyUI's `calculate_weight` at that strength is compared with loragraph's weight
  (and bias: `diff_b`, `b_norm`) after LoadLoRA(strength) + FuseLoRA: the max |difference| over the
  max |ComfyUI delta|. Norm-layer diffs (`w_norm`/`b_norm`) are ComfyUI "diff" patches of the norm's
  weight and bias, as loragraph's.
Expected: ~0 for every family but the DoRA one. There ComfyUI normalises by the unpatched weight's
norm, and loragraph by the patched one, as the producer (LyCORIS) does. Both scale the whole delta,
so the relative difference is the same at 1.0 and 0.5. The last column repeats the comparison with
ComfyUI's `weight_decompose` changed in that one place (the output-axis norm taken over the patched
weight): ~0 there too, so that norm is the whole difference.

ComfyUI is imported on the CPU (`--cpu`). `comfy.model_base` is replaced by an empty module:
`comfy.lora` imports it only for whole-model key maps, and its imports (torchvision among them) are
not needed for `load_lora` / `calculate_weight`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILES = {
    "ly_locon_tucker": ("lora", {"use_tucker": True}), "ly_loha": ("loha", {}),
    "ly_loha_tucker": ("loha", {"use_tucker": True}), "ly_lokr": ("lokr", {}),
    "ly_lokr_f4": ("lokr", {"factor": 4, "conv_dim": 2}), "ly_full": ("full", {}),
    "ly_dora": ("lora", {"dora_wd": True}), "ly_doha": ("loha", {"dora_wd": True}),
    "ly_dokr": ("lokr", {"dora_wd": True}),
    # norm-layer diffs (w_norm/b_norm), text-encoder LayerNorms included, beside full and LoHa modules
    "ly_full_norm": ("full",
                     {"train_norm": True, "preset": {"text_encoder_target_module": ["CLIPEncoderLayer"]}}),
    "ly_loha_norm": ("loha",
                     {"train_norm": True, "preset": {"text_encoder_target_module": ["CLIPEncoderLayer"]}}),
}
SAVED = ("ly_dora", "ly_doha", "ly_lokr", "ly_loha_norm")


def import_comfy(path: Path):
    sys.argv = [sys.argv[0], "--cpu"]
    sys.path.insert(0, str(path))
    import comfy.options

    comfy.options.enable_args_parsing()
    sys.modules["comfy.model_base"] = types.ModuleType("comfy.model_base")
    import comfy.lora

    return comfy.lora


def norm_of_patched_weight(comfy_lora) -> None:
    """ComfyUI's `weight_decompose` with the output-axis norm over the patched weight (LyCORIS's)."""
    import torch
    from comfy.weight_adapter import base, loha, lokr, lora

    def weight_decompose(dora_scale, weight, lora_diff, alpha, strength, intermediate_dtype, function):
        dora_scale = dora_scale.to(weight.device, intermediate_dtype)
        weight_calc = weight + function(lora_diff * alpha).type(weight.dtype)
        if dora_scale.shape[0] == weight_calc.shape[0]:
            norm = weight_calc.reshape(weight_calc.shape[0], -1).norm(dim=1, keepdim=True)
            norm = norm.reshape(weight_calc.shape[0], *[1] * (weight_calc.dim() - 1))
        else:
            norm = weight_calc.transpose(0, 1).reshape(weight_calc.shape[1], -1).norm(dim=1, keepdim=True)
            norm = norm.reshape(weight_calc.shape[1], *[1] * (weight_calc.dim() - 1)).transpose(0, 1)
        weight_calc = weight_calc * (dora_scale / (norm + torch.finfo(weight.dtype).eps)).type(weight.dtype)
        weight += strength * (weight_calc - weight)
        return weight

    for module in (base, lora, loha, lokr):
        module.weight_decompose = weight_decompose


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--comfyui", type=Path, required=True, help="a ComfyUI checkout")
    p.add_argument("--work", type=Path, default=None, help="folder for the files (default: a temp folder)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    comfy_lora = import_comfy(args.comfyui)

    from safetensors.torch import load_file

    sys.path.insert(0, str(ROOT / "tests"))
    from loragraph import host
    from loragraph.builtin_models.tiny_sd import build_tiny_sd
    from loragraph.loaders import transitions as tr
    from loragraph.loaders.engine import Engine
    from loragraph.loaders.formats.lycoris.place import kohya_names
    from loragraph.nodes import widget_text as wt
    from lycoris_oracle import write_file

    work = args.work or Path(tempfile.mkdtemp(prefix="loragraph-xcheck-"))
    loras = work / "loras"
    for i, (name, (algo, kw)) in enumerate(FILES.items()):
        if not (loras / f"{name}.safetensors").exists():
            write_file(loras / f"{name}.safetensors", build_tiny_sd, algo, 100 + i, **kw)
    host.configure(models_dir=work, output_dir=work / "output")
    engine = Engine()
    h0 = engine.load_pipeline("builtin:tiny-sd")
    pipe0 = build_tiny_sd()
    lookup = {c: kohya_names(getattr(pipe0, c), c) for c in ("unet", "text_encoder")}
    prefixes = {"unet": "lora_unet_", "text_encoder": "lora_te_"}

    missed: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "not loaded" in record.getMessage():
                missed.append(record.getMessage())

    logging.getLogger().addHandler(Catch())

    def comfy_weights(sd, strength):
        names = sorted({k.split(".")[0] for k in sd})
        patches = comfy_lora.load_lora(sd, {n: n + ".weight" for n in names})
        out = {}
        for key, patch in patches.items():  # weights, and biases (diff_b, b_norm)
            n, _, kind = key.rpartition(".")
            comp = "unet" if n.startswith("lora_unet_") else "text_encoder"
            path = lookup[comp][n[len(prefixes[comp]):]]
            w0 = getattr(getattr(pipe0, comp).get_submodule(path), kind).detach().clone()
            out[(comp, path, kind)] = (w0, comfy_lora.calculate_weight([(strength, patch, 1.0, None, None)],
                                                                       w0.clone(), n))
        return out

    def ours(name, strength):
        h = tr.add_adapter(h0, engine.lora_spec(h0, f"{name}.safetensors", strength, "x"))
        live, _ = engine.realize(wt.fuse(h, True, True, 1.0, False, ""))
        got = {(c, path, kind): getattr(m.get_base_layer(), kind).detach().clone()
               for c in ("unet", "text_encoder") for path, m in getattr(live.pipe, c).named_modules()
               if hasattr(m, "get_base_layer") and not path.endswith("base_layer")
               for kind in ("weight", "bias") if getattr(m.get_base_layer(), kind, None) is not None}
        engine.realize(h0)
        return got

    for name in SAVED:
        h = tr.add_adapter(h0, engine.lora_spec(h0, f"{name}.safetensors", 0.7, "x"))
        engine.save_lora(h, "x", loras / f"saved_{name}.safetensors", "kohya")
        engine.realize(h0)

    def worst(theirs, mine):
        out = 0.0
        for key, (w0, wc) in theirs.items():
            delta = (wc - w0).abs().max().item()
            out = max(out, (mine[key].reshape(wc.shape) - wc).abs().max().item() / max(delta, 1e-12))
        return out

    rows = []
    for name in [*FILES, *(f"saved_{n}" for n in SAVED)]:
        sd = load_file(str(loras / f"{name}.safetensors"))
        for strength in (1.0, 0.5):
            missed.clear()
            mine = ours(name, strength)
            rows.append([name, strength, mine, sd, worst(comfy_weights(sd, strength), mine), len(missed)])
    norm_of_patched_weight(comfy_lora)
    print("| file | strength | keys ComfyUI did not load | max diff / max delta "
          "| same, patched-weight norm |")
    print("|---|---:|---:|---:|---:|")
    for name, strength, mine, sd, as_is, not_loaded in rows:
        patched = worst(comfy_weights(sd, strength), mine)
        print(f"| {name} | {strength} | {not_loaded} | {as_is:.2e} | {patched:.2e} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
