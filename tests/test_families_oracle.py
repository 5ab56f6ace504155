"""A LoRA on Z-Image, Chroma, Kontext, LTX, Lumina2, Sana, CogView4, HunyuanVideo and Flux 2 through
the engine, image for image against raw diffusers on the same built-in tiny pipeline, offline.

Per family: a diffusers-form file (the pipeline's own `save_lora_weights`) and the family's most
common other layout wherever diffusers 0.42.1's `load_lora_weights` converts one for that pipeline
(docs/formats.md, "Model families beyond SD and Flux": Lumina2's converter splits at the full
model's sizes, so diffusers refuses its original layout on any smaller model, as the engine does;
Sana's and CogView4's mixins convert none). At strengths 1.0 and 0.5, unfused, fused, and fused then unfused:
the oracle is a fresh build driven by `load_lora_weights`, `set_adapters`, `fuse_lora` and the
pipeline called as the Sampler calls it (test_sampler_families.family_inputs); every image and frame
within 2/255, fp32 on the CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import max_diff
from family_layouts import TABLE_LAYOUTS, write_table_file
from loragraph.base.errors import NodeInputError
from loragraph.builtin_models.catalog import BUILTINS
from loragraph.loaders import transitions as tr
from loragraph.loaders.engine import Engine
from loragraph.testing import write_lora_file
from test_sampler_families import family_inputs, raw_call

TOL = 2 / 255
CHANGE = 0.01  # a loaded LoRA moves some pixel at least this much (a silent no-op cannot pass)

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
FLUX_TARGETS = (*ATTENTION, "add_q_proj", "ff.net.0.proj")
# family -> (the diffusers-form file's target modules, the other layout diffusers converts or None)
FAMILIES: dict[str, tuple[tuple[str, ...], str | None]] = {
    "tiny-zimage": ((*ATTENTION, "feed_forward.w1", "feed_forward.w3"), "diffusion-model"),
    "tiny-chroma": (FLUX_TARGETS, "kohya-flux"),
    "tiny-kontext": (FLUX_TARGETS, "kohya-flux"),
    "tiny-ltx": ((*ATTENTION, "ff.net.0.proj"), "ltx-original"),
    "tiny-lumina2": ((*ATTENTION, "feed_forward.linear_1"), None),
    "tiny-sana": (ATTENTION, None),
    "tiny-cogview4": ((*ATTENTION, "ff.net.0.proj"), None),
    "tiny-hunyuanvideo": ((*ATTENTION, "add_q_proj"), "hunyuan-original"),
    "tiny-flux2": ((*ATTENTION, "to_qkv_mlp_proj"), "flux2-ai-toolkit"),
}
CASES = [(family, layout) for family, (_, other) in FAMILIES.items()
         for layout in ("diffusers", *((other,) if other else ()))]


def stem(family: str, layout: str) -> str:
    return f"{family.removeprefix('tiny-')}_{layout}"


def write_family_file(path: Path, family: str, layout: str, seed: int = 7) -> Path:
    """The family's seeded LoRA in `layout` (alpha 2 at rank 4 where the layout carries an alpha)."""
    pipe = BUILTINS[family].builder()
    targets = FAMILIES[family][0]
    if layout in TABLE_LAYOUTS:
        table, kohya = TABLE_LAYOUTS[layout]
        transformer = pipe.transformer
        return write_table_file(path, transformer, table(transformer), kohya=kohya, alpha=2, seed=seed)
    return write_lora_file(path, fmt=layout, rank=4, alpha=2, seed=seed, pipe=pipe,  # type: ignore[arg-type]
                           components=("transformer",), targets=targets, scale=1.5)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("family-loras")
    for family, layout in CASES:
        write_family_file(root / "loras" / f"{stem(family, layout)}.safetensors", family, layout)
    return root


@pytest.fixture(scope="module")
def engine(models, tmp_path_factory) -> Engine:
    """One engine for the module: each test starts from the base handle, which the engine restores."""
    from loragraph import host

    host.configure(models_dir=models, output_dir=tmp_path_factory.mktemp("output"))
    return Engine()


def raw(family: str) -> Any:
    pipe = BUILTINS[family].builder()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def base_weights(model: Any) -> dict[str, torch.Tensor]:
    """The base weights by their own names (peft keeps them under `.base_layer` while it wraps a layer)."""
    return {k.replace(".base_layer", ""): v.detach().clone() for k, v in model.state_dict().items()
            if "lora_" not in k}


def max_weight_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize(("family", "layout"), CASES)
@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_a_family_lora_renders_as_diffusers_unfused_fused_and_unfused_again(engine, models, family, layout,
                                                                            strength):
    inputs, kwargs = family_inputs(family, batch_size=1)
    name = stem(family, layout)
    h0 = engine.load_pipeline(f"builtin:{family}", "float32", "cpu")
    assert h0.source.denoisers == ("transformer",)
    base = engine.sample(h0, **inputs)

    oracle = raw(family)
    base_w = base_weights(oracle.transformer)
    oracle.load_lora_weights(str(models / "loras"), weight_name=f"{name}.safetensors", adapter_name="x")
    oracle.set_adapters(["x"], [strength])
    want = raw_call(oracle, **kwargs)

    h = tr.add_adapter(h0, engine.lora_spec(h0, f"{name}.safetensors", strength, "x"))
    live, warnings = engine.realize(h)
    assert warnings == []
    assert live.pipe.get_list_adapters() == {"transformer": ["x"]}
    got = engine.sample(h, **inputs)
    assert max_diff(got, want) <= TOL
    assert max_diff(got, base) > CHANGE  # the LoRA did something

    hf = tr.fuse(h, True, True, 1.0, False)
    fused = engine.sample(hf, **inputs)
    live, _ = engine.realize(hf)
    oracle.fuse_lora(components=["transformer"], lora_scale=1.0, adapter_names=["x"])
    assert max_weight_diff(base_weights(live.pipe.transformer), base_weights(oracle.transformer)) <= 1e-5
    assert max_diff(fused, raw_call(oracle, **kwargs)) <= TOL

    hu = tr.unfuse(hf, True, True)
    unfused = engine.sample(hu, **inputs)
    live, _ = engine.realize(hu)
    assert max_weight_diff(base_weights(live.pipe.transformer), base_w) == 0.0  # the base bits back
    assert torch.equal(unfused, got)


def adapted_layers(model: Any, adapter: str = "x") -> set[str]:
    suffix = f".lora_A.{adapter}"
    return {n.removesuffix(suffix) for n, _ in model.named_modules() if n.endswith(suffix)}


@pytest.mark.parametrize(("family", "layout"), [c for c in CASES if c[1] in TABLE_LAYOUTS])
def test_every_module_of_a_family_layout_lands_in_the_engine_and_in_diffusers(engine, models, family, layout):
    """The converted file reaches every layer its table names, in both: no module silently dropped."""
    from loragraph.loaders import store
    from loragraph.loaders.coverage import coverage

    transformer = raw(family).transformer
    table, _ = TABLE_LAYOUTS[layout]
    layers = {p for paths in table(transformer).values() for p in paths}
    path = models / "loras" / f"{stem(family, layout)}.safetensors"

    oracle = raw(family)
    oracle.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="x")
    assert adapted_layers(oracle.transformer) == layers

    h0 = engine.load_pipeline(f"builtin:{family}", "float32", "cpu")
    live, _ = engine.realize(tr.add_adapter(h0, engine.lora_spec(h0, path.name, 1.0, "x")))
    assert adapted_layers(live.pipe.transformer) == layers
    cov = coverage(live.pipe, store.read_lora(str(path)))
    assert cov.complete and cov.unmatched == ()


def test_lumina2s_original_layout_is_refused_as_diffusers_refuses_it_below_full_size(engine, models):
    """diffusers splits Lumina2's fused `attention.qkv` at Lumina-Image-2.0's 2304/768/768, so on any
    other size its converter raises; the engine refuses the file too, naming `lora_name`, and loads
    nothing."""
    from loragraph.loaders.live import LoraOperationError

    path = write_family_file(models / "loras" / "lumina2_original.safetensors", "tiny-lumina2",
                             "lumina2-original")
    with pytest.raises(RuntimeError, match="split"):
        raw("tiny-lumina2").load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="x")
    h0 = engine.load_pipeline("builtin:tiny-lumina2", "float32", "cpu")
    with pytest.raises((NodeInputError, LoraOperationError)) as refused:
        engine.realize(tr.add_adapter(h0, engine.lora_spec(h0, path.name, 1.0, "x")))
    assert refused.value.input_name == "lora_name" and "lumina2_original" in str(refused.value)
    assert engine.info(h0)["adapters"] == {}
