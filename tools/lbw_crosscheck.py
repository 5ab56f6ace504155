"""Cross-check block-weight vectors against ComfyUI-Inspire-Pack's LoRA Block Weight in real ComfyUI.

    PYTHONPATH=/path/to/folder-holding-loragraph \\
    /path/to/comfyui-venv/bin/python tools/lbw_crosscheck.py --comfyui /path/to/ComfyUI \\
        --inspire /path/to/ComfyUI-Inspire-Pack [--work DIR] [--write-fixture tests/fixtures/lbw_inspire.json]

Needs a ComfyUI checkout and an Inspire-Pack checkout (neither is a dependency; nothing of them is
copied here). ComfyUI is imported on the CPU (`--cpu`), as tools/comfyui_crosscheck.py does; without
OpenCV, an empty `cv2` module stands in (Inspire's libs/utils imports it for image nodes only).
The committed fixture was made with ComfyUI a125cd84 (v0.3.64) and Inspire-Pack 1aef2c57 (V1.21).

For tiny pipelines with the block layout of SD 1.x and SDXL (tests/block_shapes.py) and a kohya LoRA
on every attention layer, each case (vector or preset, strength, text-encoder strength) is applied
1. by Inspire's `LoraLoaderBlockWeight.load_lora_for_models` on a real ComfyUI model (`ModelPatcher`
   built from the UNet's LDM weights; `patch_model` then gives the patched weights); the CLIP side
   goes through Inspire's own key classification and ComfyUI's `calculate_weight` on the same text
   encoder weights (a CLIP object that records the patches Inspire adds);
2. by loragraph: LoadLoRA(strength) + SetAdapterWeights(weights, text_encoder_weights, the vector)
   + FuseLoRA, on the same pipeline read from a diffusers folder.
It prints, per case, the largest |difference| of the patched weights over the largest |delta|, for
the UNet and the text encoders (expected: float32 rounding, ~1e-7). With --write-fixture it writes
Inspire's numbers (per module: the delta's sum and L2 norm) for tests/test_habits_blocks.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
# (layout, vector given to loragraph, vector given to Inspire, strength, text-encoder strength)
CASES = [
    ("sd15", "0.5,1,0.2,0.3,0.4,0.6,0.7,0.9,1.1,1.2,1.3,0.1,0.2,0.3,-1,0,1", None, 0.8, 0.6),
    ("sd15", "MIDD", "SD-MIDD", 1.0, 1.0),
    ("sd15", "OUTALL", "SD-OUTALL", 0.7, 0.5),
    ("sdxl", "0.5,1,0.2,0.3,0.4,0.9,1.1,1.2,-0.3,0.1,0.2,0.3", None, 0.8, 0.6),
    ("sdxl", "INALL", "SDXL-INALL", 1.0, 0.4),
]


def import_comfy(comfyui: Path, inspire: Path):
    sys.argv = [sys.argv[0], "--cpu"]
    sys.path.insert(0, str(comfyui))
    sys.path.insert(1, str(inspire))
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.lora
    import comfy.model_detection
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models
    import comfy.utils
    import utils.extra_config  # noqa: F401  (as ComfyUI's main.py: its `utils` package before any other)

    import server

    if getattr(server.PromptServer, "instance", None) is None:  # Inspire registers routes at import
        class _Routes:
            def __getattr__(self, _name):
                return lambda *a, **k: (lambda f: f)

        server.PromptServer.instance = type("Instance", (), {"routes": _Routes()})()
    try:
        import cv2  # noqa: F401
    except ImportError:  # Inspire's libs/utils imports OpenCV for image nodes; LoRA Block Weight uses none
        import types

        sys.modules["cv2"] = types.ModuleType("cv2")
    from inspire import lora_block_weight  # the real Inspire-Pack module

    return comfy, lora_block_weight


class RecordingClip:
    """What Inspire hands the CLIP: its state-dict keys for the key map, and `add_patches` calls."""

    def __init__(self, keys):
        self.keys = keys
        self.patches: dict[str, tuple[float, object]] = {}
        self.cond_stage_model = self

    def state_dict(self):
        return dict.fromkeys(self.keys)

    def clone(self):
        return RecordingClip(self.keys)

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        for k, v in patches.items():
            self.patches[k] = (strength_patch, v)
        return list(patches)


def clip_weights(pipe, kind):
    """ComfyUI's CLIP key -> the pipeline's text-encoder weight (ComfyUI names: clip_l / clip_g)."""
    out = {}
    names = [("clip_l", pipe.text_encoder)] + ([("clip_g", pipe.text_encoder_2)] if kind == "sdxl" else [])
    for prefix, te in names:
        for key, value in te.state_dict().items():
            key = key if key.startswith("text_model.") else "text_model." + key
            out[f"{prefix}.transformer.{key}"] = value
    return out


def ldm_unet(unet):
    """The UNet's weights in ComfyUI's (LDM) names, from loragraph.testing's block map (SDXL's
    add_embedding is LDM's label_emb)."""
    from loragraph.testing import _LDM_RESNET, _ldm_unet_names, _rename

    pairs = [*_ldm_unet_names(unet.config), ("add_embedding.linear_1.", "label_emb.0.0."),
             ("add_embedding.linear_2.", "label_emb.0.2.")]
    pairs.sort(key=lambda p: -len(p[0]))
    out = {}
    for key, value in unet.state_dict().items():
        new = _rename(key, pairs)
        if ".resnets." in key:
            cut = 2 if new.startswith("middle_block.") else 3  # middle_block.0.x, input_blocks.1.0.x
            head, tail = new.split(".", cut)[:cut], new.split(".", cut)[cut]
            for ours, theirs in _LDM_RESNET:
                if tail.startswith(ours):
                    tail = theirs + tail[len(ours):]
                    break
            new = ".".join(head) + "." + tail
        out["model.diffusion_model." + new] = value
    return out


def comfy_model(comfy, pipe, kind):
    sd = ldm_unet(pipe.unet)
    unet_config = comfy.model_detection.detect_unet_config(sd, "model.diffusion_model.")
    config_class = comfy.supported_models.SD15 if kind == "sd15" else comfy.supported_models.SDXL
    model_config = config_class(unet_config)
    if kind == "sdxl":  # SDXL's 64-wide heads do not divide the tiny 32-wide blocks; heads never matter here
        model_config.unet_config.update(num_heads=-1, num_head_channels=16)
    model = model_config.get_model(sd, "model.diffusion_model.", device=torch.device("cpu"))
    model.load_model_weights(sd, "model.diffusion_model.")
    cpu = torch.device("cpu")
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)
    to_diffusers = {v: k for k, v in comfy.utils.unet_to_diffusers(unet_config).items()}
    return patcher, to_diffusers


def inspire_deltas(comfy, lbw, patcher, to_diffusers, clip_w, lora_path, vector, strength, te_strength):
    lora = comfy.utils.load_torch_file(str(lora_path), safe_load=True)
    clip = RecordingClip(list(clip_w))
    before = {k: v.clone() for k, v in patcher.model.diffusion_model.state_dict().items()}
    model, clip, populated = lbw.LoraLoaderBlockWeight.load_lora_for_models(
        patcher, clip, lora, strength, te_strength, False, 0, 4.0, 1.0, vector)
    model.patch_model()
    after = model.model.diffusion_model.state_dict()
    unet = {}
    for key, value in after.items():
        delta = value.float() - before[key].float()
        if delta.abs().max() > 0:
            unet["unet." + to_diffusers[key].removesuffix(".weight")] = delta
    model.unpatch_model()
    te = {}
    for key, (strength_patch, patch) in clip.patches.items():
        weight = clip_w[key].float()
        patched = comfy.lora.calculate_weight([(strength_patch, patch, 1.0, None, None)], weight.clone(), key)
        name = key.removesuffix(".weight").replace("clip_l.transformer.", "text_encoder.")
        te[name.replace("clip_g.transformer.", "text_encoder_2.")] = patched - weight
    return unet, te, populated


def loragraph_deltas(model_name, lora_name, vector, strength, te_strength):
    """The fused delta per module of loragraph's LoadLoRA + SetAdapterWeights(vector) + FuseLoRA."""
    from loragraph.loaders import transitions
    from loragraph.loaders.engine import get_engine
    from loragraph.nodes import widget_text

    engine = get_engine()
    h0 = engine.load_pipeline(model_name)
    pipe = engine.live(h0.source).pipe
    components = ["unet", *(te for te in ("text_encoder", "text_encoder_2") if te in h0.source.components)]

    def weights():
        out = {}
        for c in components:
            for key, value in getattr(pipe, c).state_dict().items():
                if key.endswith(".weight") and "lora_" not in key:
                    key = key.removesuffix(".weight").replace(".base_layer", "")
                    if c != "unet" and not key.startswith("text_model."):
                        key = "text_model." + key  # transformers 5 names them without it
                    out[f"{c}.{key}"] = value.detach().clone()
        return out

    engine.realize(h0)
    base = weights()
    h = transitions.add_adapter(h0, engine.lora_spec(h0, lora_name, strength, "lbw"))
    h = widget_text.set_weights(h, "lbw", str(strength), str(te_strength), vector)
    h = widget_text.fuse(h, True, True, 1.0, False, "")
    engine.realize(h)
    fused = weights()
    deltas = {k: fused[k].float() - base[k].float() for k in fused if k in base}
    engine.realize(h0)  # back to the base pipeline
    return {k: v for k, v in deltas.items() if v.abs().max() > 0}


def stats(delta: torch.Tensor) -> list[float]:
    d = delta.double()
    return [float(d.sum()), float(d.norm())]


def compare(ours: dict, theirs: dict) -> tuple[int, float, list[str]]:
    missing = sorted(set(ours) ^ set(theirs))
    worst = 0.0
    for k in set(ours) & set(theirs):
        scale = max(float(theirs[k].abs().max()), 1e-12)
        worst = max(worst, float((ours[k] - theirs[k]).abs().max()) / scale)
    return len(set(ours) & set(theirs)), worst, missing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", type=Path, required=True)
    parser.add_argument("--inspire", type=Path, required=True)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--write-fixture", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = args.work or Path(tempfile.mkdtemp(prefix="lbw-crosscheck-"))
    comfy, lbw = import_comfy(args.comfyui, args.inspire)
    sys.path.insert(0, str(ROOT / "tests"))
    import block_shapes
    import folder_paths
    from loragraph import host

    paths = block_shapes.write_models(work)
    host.configure(models_dir=work, output_dir=work / "output")
    for kind in ("loras", "diffusers"):  # ComfyUI is loaded: loragraph reads its folders, as inside it
        folder_paths.add_model_folder_path(kind, str(work / kind), is_default=True)
    built = {}
    fixture = {"tool": "tools/lbw_crosscheck.py", "cases": []}
    print(f"{'layout':6} {'vector':58} {'w':>4} {'te':>4} {'unet mods':>9} {'unet rel':>9} "
          f"{'te mods':>7} {'te rel':>9}  Inspire's populated vector")
    failed = False
    for kind, ours_vector, inspire_vector, strength, te_strength in CASES:
        if kind not in built:
            pipe = block_shapes.build(kind)
            built[kind] = (*comfy_model(comfy, pipe, kind), clip_weights(pipe, kind))
        patcher, to_diffusers, clip_w = built[kind]
        unet, te, populated = inspire_deltas(comfy, lbw, patcher, to_diffusers, clip_w, paths[f"{kind}_lora"],
                                             inspire_vector or ours_vector, strength, te_strength)
        ours = loragraph_deltas(f"{kind}-layout", f"lbw_{kind}.safetensors", ours_vector, strength,
                                te_strength)
        ours_unet = {k: v for k, v in ours.items() if k.startswith("unet.")}
        ours_te = {k: v for k, v in ours.items() if not k.startswith("unet.")}
        n_u, rel_u, miss_u = compare(ours_unet, unet)
        n_t, rel_t, miss_t = compare(ours_te, te)
        failed |= bool(miss_u or miss_t) or max(rel_u, rel_t) > 1e-5
        print(f"{kind:6} {ours_vector:58} {strength:4} {te_strength:4} {n_u:9} {rel_u:9.1e} {n_t:7} "
              f"{rel_t:9.1e}  {populated}" + (f"  MISSING/EXTRA {miss_u + miss_t}" if miss_u or miss_t
                                              else ""))
        fixture["cases"].append({
            "layout": kind, "vector": ours_vector, "inspire_vector": inspire_vector or ours_vector,
            "strength": strength, "text_encoder_strength": te_strength, "inspire_populated": populated,
            "deltas": {k: stats(v) for k, v in sorted({**unet, **te}.items())},
        })
    if args.write_fixture:
        args.write_fixture.write_text(json.dumps(fixture, indent=1) + "\n")
        print(f"wrote {args.write_fixture}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
