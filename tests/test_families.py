"""The families beyond SD/SDXL/SD3/Flux through the engine, against raw diffusers, offline: Wan 2.1,
Wan 2.2 (two experts) and Qwen-Image, each with a diffusers-form LoRA and one in the family's other
common layout (Wan: the original repository's and musubi-tuner's keys; Qwen-Image: `diffusion_model.`
keys with alphas).

The pipelines are the built-in tiny ones (`builtin:tiny-wan`, `tiny-wan22`, `tiny-qwenimage`). The
oracle is a fresh build driven by the pipeline's own LoRA API (`load_lora_weights`, `set_adapters`,
`fuse_lora`, Wan's `load_into_transformer_2`). What is compared is each denoiser's output for fixed,
seeded inputs and, fused, its weights; fp32 on the CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from loragraph.base.errors import NodeInputError
from loragraph.loaders import transitions as tr
from loragraph.loaders.engine import Engine
from loragraph.testing import WAN_TARGETS, write_lora_file

TOL = 1e-4  # the denoisers' outputs are O(1); engine and diffusers run the same float ops
CHANGE = 1e-2  # a loaded LoRA moves the output at least this much (a silent no-op cannot pass)


def build(model: str):
    """A fresh built-in pipeline (`tiny-wan`, `tiny-wan22`, `tiny-qwenimage`): the same bits each time."""
    from loragraph.builtin_models.catalog import BUILTIN_MODELS

    return BUILTIN_MODELS[model][0]()


QWEN_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_v_proj", "img_mlp.net.2")
# file stem -> (model, layout): the Wan files of one seed are one adapter in three spellings
FILES = {
    "wan_d": ("tiny-wan", "diffusers"),
    "wan_o": ("tiny-wan", "wan-original"),
    "wan_m": ("tiny-wan", "wan-musubi"),
    "qwen_d": ("tiny-qwenimage", "diffusers"),
    "qwen_dm": ("tiny-qwenimage", "diffusion-model"),
}


@pytest.fixture(scope="module")
def fam_models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("family-models")
    loras = root / "loras"
    for stem, (model, fmt) in FILES.items():
        pipe = build(model)
        targets = WAN_TARGETS if model.startswith("tiny-wan") else QWEN_TARGETS
        # alpha 2 at rank 4: each layout must carry alpha / rank (diffusers' metadata, or `.alpha` keys)
        write_lora_file(loras / f"{stem}.safetensors", fmt=fmt, rank=4, alpha=2, seed=7, pipe=pipe,
                        components=("transformer",), targets=targets, scale=1.5)
    # a second Wan adapter (another seed): the low-noise expert's file in the Wan 2.2 tests
    write_lora_file(loras / "wan_low.safetensors", fmt="diffusers", rank=4, seed=8, pipe=build("tiny-wan22"),
                    components=("transformer",), targets=WAN_TARGETS, scale=1.5)
    return root


@pytest.fixture()
def engine(fam_models, tmp_path):
    from loragraph import host

    host.configure(models_dir=fam_models, output_dir=tmp_path / "output")
    return Engine()


def raw(fam_models: Path, model: str):
    """A fresh built-in pipeline, for diffusers' own LoRA API."""
    return build(model)


def raw_load(pipe, fam_models: Path, stem: str, name: str, **kwargs) -> None:
    pipe.load_lora_weights(str(fam_models / "loras"), weight_name=f"{stem}.safetensors", adapter_name=name,
                           **kwargs)


def denoise(model, which: str) -> torch.Tensor:
    """The denoiser's output for fixed, seeded inputs (one step's prediction)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if which == "qwen":
            return model(
                hidden_states=torch.randn(1, 16, 16, generator=g),
                encoder_hidden_states=torch.randn(1, 7, 16, generator=g),
                encoder_hidden_states_mask=torch.ones(1, 7),
                timestep=torch.tensor([0.5]), img_shapes=[[(1, 4, 4)]], return_dict=False,
            )[0]
        return model(
            hidden_states=torch.randn(1, 16, 2, 8, 8, generator=g), timestep=torch.tensor([500]),
            encoder_hidden_states=torch.randn(1, 8, 32, generator=g), return_dict=False,
        )[0]


def base_weights(model) -> dict[str, torch.Tensor]:
    """The base weights by their own names (peft keeps them under `.base_layer` while it wraps a layer)."""
    return {k.replace(".base_layer", ""): v.detach().clone() for k, v in model.state_dict().items()
            if "lora_" not in k}


def max_weight_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def kind(model: str) -> str:
    return "qwen" if model == "tiny-qwenimage" else "wan"


def load(engine, handle, stem, strength=1.0, target="auto", name=""):
    spec = engine.lora_spec(handle, f"{stem}.safetensors", strength, name, target=target)
    return tr.add_adapter(handle, spec)


# --- one file per family and layout: unfused, fused, fused-then-unfused ----------------------------


@pytest.mark.parametrize("stem", list(FILES))
@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_a_lora_matches_diffusers_unfused_fused_and_unfused_again(engine, fam_models, stem, strength):
    model = FILES[stem][0]
    h0 = engine.load_pipeline(f"builtin:{model}")
    assert h0.source.denoisers == ("transformer",) and h0.source.text_encoders == ()
    live, _ = engine.realize(h0)
    base_out = denoise(live.pipe.transformer, kind(model))
    base_w = base_weights(live.pipe.transformer)

    oracle = raw(fam_models, model)
    raw_load(oracle, fam_models, stem, "x")
    oracle.set_adapters(["x"], [strength])
    want = denoise(oracle.transformer, kind(model))

    h = load(engine, h0, stem, strength)
    live, warnings = engine.realize(h)
    assert warnings == []
    got = denoise(live.pipe.transformer, kind(model))
    assert float((got - want).abs().max()) <= TOL
    assert float((got - base_out).abs().max()) > CHANGE  # the LoRA did something

    hf = tr.fuse(h, True, True, 1.0, False)
    live, _ = engine.realize(hf)
    oracle.fuse_lora(components=["transformer"], lora_scale=1.0, adapter_names=["x"])
    assert max_weight_diff(base_weights(live.pipe.transformer), base_weights(oracle.transformer)) <= TOL
    assert float((denoise(live.pipe.transformer, kind(model)) - want).abs().max()) <= TOL

    live, _ = engine.realize(tr.unfuse(hf, True, True))
    assert max_weight_diff(base_weights(live.pipe.transformer), base_w) == 0.0  # the base bits back
    assert torch.equal(denoise(live.pipe.transformer, kind(model)), got)


def test_the_wan_layouts_are_one_adapter(engine):
    """The same adapter written three ways (alpha in metadata or in `.alpha` keys) acts the same."""
    h0 = engine.load_pipeline("builtin:tiny-wan")
    outs = []
    for stem in ("wan_d", "wan_o", "wan_m"):
        live, _ = engine.realize(load(engine, h0, stem))
        outs.append(denoise(live.pipe.transformer, "wan"))
    assert all(float((o - outs[0]).abs().max()) <= TOL for o in outs[1:])


def test_coverage_places_the_family_layouts_diffusers_converts(engine, fam_models):
    from loragraph.loaders import store
    from loragraph.loaders.coverage import coverage

    live = engine.live(engine.load_pipeline("builtin:tiny-wan").source)
    for stem in ("wan_o", "wan_m"):
        cov = coverage(live.pipe, store.read_lora(str(fam_models / "loras" / f"{stem}.safetensors")))
        assert cov.complete and cov.matched == 20 and dict(cov.per_component) == {
            "transformer": {"matched": 20, "unmatched": 0}
        }


# --- Wan 2.2: two experts ------------------------------------------------------------------------


def test_wan22_lists_both_experts_as_denoisers(engine):
    h = engine.load_pipeline("builtin:tiny-wan22")
    assert h.source.components == ("transformer", "transformer_2")
    assert h.source.denoisers == ("transformer", "transformer_2")
    assert h.source.text_encoders == ()


def test_wan22_a_file_on_transformer_2_changes_only_transformer_2(engine, fam_models):
    h0 = engine.load_pipeline("builtin:tiny-wan22")
    live, _ = engine.realize(h0)
    base1, base2 = denoise(live.pipe.transformer, "wan"), denoise(live.pipe.transformer_2, "wan")
    base_w1 = base_weights(live.pipe.transformer)

    oracle = raw(fam_models, "tiny-wan22")
    raw_load(oracle, fam_models, "wan_low", "low", load_into_transformer_2=True)
    want2 = denoise(oracle.transformer_2, "wan")

    h = load(engine, h0, "wan_low", target="transformer_2")
    assert h.state.adapters[0].target == "transformer_2"
    live, _ = engine.realize(h)
    assert torch.equal(denoise(live.pipe.transformer, "wan"), base1)  # untouched
    got2 = denoise(live.pipe.transformer_2, "wan")
    assert float((got2 - want2).abs().max()) <= TOL
    assert float((got2 - base2).abs().max()) > CHANGE

    # fuse_unet fuses every denoiser holding the adapter: transformer_2 here, transformer unchanged
    hf = tr.fuse(h, True, True, 1.0, False)
    assert hf.state.fused[0].components == ("transformer", "transformer_2")
    live, _ = engine.realize(hf)
    oracle.fuse_lora(components=["transformer_2"], lora_scale=1.0, adapter_names=["low"])
    assert max_weight_diff(base_weights(live.pipe.transformer_2), base_weights(oracle.transformer_2)) <= TOL
    assert max_weight_diff(base_weights(live.pipe.transformer), base_w1) == 0.0
    live, _ = engine.realize(tr.unfuse(hf, True, False))
    assert torch.equal(denoise(live.pipe.transformer_2, "wan"), got2)


def test_wan22_a_high_and_a_low_noise_file_match_diffusers(engine, fam_models):
    h0 = engine.load_pipeline("builtin:tiny-wan22")
    oracle = raw(fam_models, "tiny-wan22")
    raw_load(oracle, fam_models, "wan_d", "high")
    raw_load(oracle, fam_models, "wan_low", "low", load_into_transformer_2=True)
    oracle.set_adapters(["high", "low"], [0.5, 0.5])

    h = load(engine, h0, "wan_d", 0.5, name="high")
    h = load(engine, h, "wan_low", 0.5, target="transformer_2", name="low")
    live, _ = engine.realize(h)
    for comp in ("transformer", "transformer_2"):
        got, want = denoise(getattr(live.pipe, comp), "wan"), denoise(getattr(oracle, comp), "wan")
        assert float((got - want).abs().max()) <= TOL


def test_lora_info_names_the_component_each_adapter_sits_on_and_its_target(engine):
    h0 = engine.load_pipeline("builtin:tiny-wan22")
    h = load(engine, h0, "wan_d", name="high")
    h = load(engine, h, "wan_low", target="transformer_2", name="low")
    adapters = engine.info(h)["adapters"]
    assert (adapters["high"]["target"], adapters["high"]["components"]) == ("auto", ["transformer"])
    assert (adapters["low"]["target"], adapters["low"]["components"]) == ("transformer_2", ["transformer_2"])


def test_wan22_the_same_file_on_another_target_is_another_adapter(engine):
    h0 = engine.load_pipeline("builtin:tiny-wan22")
    a = engine.lora_spec(h0, "wan_low.safetensors", 1.0, "x")
    b = engine.lora_spec(h0, "wan_low.safetensors", 1.0, "x", target="transformer_2")
    assert a != b and a == engine.lora_spec(h0, "wan_low.safetensors", 1.0, "x", target="auto")
    assert b == engine.lora_spec(h0, "wan_low.safetensors", 1.0, "x", target="transformer_2")


def test_a_target_the_pipeline_lacks_is_an_error_naming_target(engine):
    h = engine.load_pipeline("builtin:tiny-wan")
    with pytest.raises(NodeInputError) as e:
        engine.lora_spec(h, "wan_d.safetensors", 1.0, "", target="transformer_2")
    assert e.value.input_name == "target"
    with pytest.raises(NodeInputError) as e:
        engine.lora_spec(h, "wan_d.safetensors", 1.0, "", target="unet")
    assert e.value.input_name == "target"


def test_inspect_names_the_family_a_file_fits(fam_models, capsys):
    from loragraph.cli import main

    args = ["--json", "--models-dir", str(fam_models), "--model", "builtin:tiny-wan"]
    for stem in ("wan_o", "wan_m"):
        assert main(["inspect", str(fam_models / "loras" / f"{stem}.safetensors"), *args]) == 0
        line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert line["coverage"]["loadable"] is True and line["summary"]["family"] == "WanPipeline"
    # a file that does not land: no family named
    assert main(["inspect", str(fam_models / "loras" / "qwen_d.safetensors"), *args]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "family" not in line["summary"]


# --- the shipped Wan 2.2 example: a high-noise and a low-noise file ---------------------------------

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_the_wan22_example_validates_runs_and_matches_diffusers(tmp_path):
    from diffusers.loaders import WanLoraLoaderMixin
    from loragraph import host
    from loragraph.builtin_models.catalog import BUILTIN_MODELS
    from loragraph.cli import main
    from loragraph.graph.executor import Executor
    from loragraph.graph.workflow import load_workflow
    from loragraph.loaders.engine import get_engine
    from loragraph.nodes import HEADLESS_NODE_CLASS_MAPPINGS

    workflow = EXAMPLES / "workflows" / "wan22_lora_pair.json"
    assert main(["validate", str(workflow), "--models-dir", str(EXAMPLES / "models")]) == 0
    host.configure(models_dir=EXAMPLES / "models", output_dir=tmp_path / "output")
    prompt = load_workflow(workflow)
    result = Executor(HEADLESS_NODE_CLASS_MAPPINGS).execute(prompt)
    assert result.ok, result.error_lines()
    info = json.loads(result.outputs["4"]["text"][0])
    assert info["list_adapters"] == {"transformer": ["high"], "transformer_2": ["low"]}

    # the live pipeline the run left, against diffusers' own loader on a fresh tiny-wan22
    engine = get_engine()
    h = engine.load_pipeline("builtin:tiny-wan22", "float32")
    h = tr.add_adapter(h, engine.lora_spec(h, "wan22/high_noise.safetensors", 1.0, "high"))
    low = engine.lora_spec(h, "wan22/low_noise.safetensors", 1.0, "low", target="transformer_2")
    h = tr.add_adapter(h, low)
    live, _ = engine.realize(h)
    oracle = BUILTIN_MODELS["tiny-wan22"][0]()
    base = {c: denoise(getattr(oracle, c), "wan") for c in ("transformer", "transformer_2")}
    loras = str(EXAMPLES / "models" / "loras" / "wan22")
    assert isinstance(oracle, WanLoraLoaderMixin)
    oracle.load_lora_weights(loras, weight_name="high_noise.safetensors", adapter_name="high")
    oracle.load_lora_weights(loras, weight_name="low_noise.safetensors", adapter_name="low",
                             load_into_transformer_2=True)
    for comp in ("transformer", "transformer_2"):
        got, want = denoise(getattr(live.pipe, comp), "wan"), denoise(getattr(oracle, comp), "wan")
        assert float((got - want).abs().max()) <= TOL
        assert float((got - base[comp]).abs().max()) > CHANGE


def test_the_example_lora_files_are_the_tools(tmp_path):
    import runpy

    tool = runpy.run_path(str(EXAMPLES.parent / "tools" / "make_family_loras.py"))
    assert tool["main"](["--check", "--out", str(EXAMPLES / "models" / "loras")]) == 0


def test_wan22_a_switch_on_transformer_2_hot_swaps_and_matches_diffusers(engine, fam_models):
    """Two files of one layout on the low-noise expert: the second is copied into the first's layers."""
    h0 = engine.load_pipeline("builtin:tiny-wan22")
    live = engine.live(h0.source)
    engine.realize(load(engine, h0, "wan_low", target="transformer_2"))
    live.ops.clear()
    live, _ = engine.realize(load(engine, h0, "wan_d", 0.7, target="transformer_2"))
    ops = [op.split(" ")[0] for op in live.ops]
    assert "hotswap" in ops and "load_lora_weights" not in ops
    assert live.pipe.get_list_adapters() == {"transformer_2": ["wan_d"]}

    oracle = raw(fam_models, "tiny-wan22")
    raw_load(oracle, fam_models, "wan_d", "d", load_into_transformer_2=True)
    oracle.set_adapters(["d"], [0.7])
    for comp in ("transformer", "transformer_2"):
        got, want = denoise(getattr(live.pipe, comp), "wan"), denoise(getattr(oracle, comp), "wan")
        assert float((got - want).abs().max()) <= TOL


def test_wan_auto_follows_diffusers_which_ignores_transformer_2_keys(engine, fam_models):
    """diffusers 0.42.1's Wan loader puts every file on `transformer` (`load_into_transformer_2` is the
    only way onto the low-noise expert) and drops `transformer_2.` keys: `auto` does the same
    (docs/CONTRACT.md, Model families). A file of `transformer_2.` keys alone loads nothing in
    diffusers; the engine says so instead of loading a no-op."""
    import safetensors.torch
    from loragraph.loaders.live import LoraOperationError

    high = safetensors.torch.load_file(str(fam_models / "loras" / "wan_d.safetensors"))
    low = safetensors.torch.load_file(str(fam_models / "loras" / "wan_low.safetensors"))
    second = {k.replace("transformer.", "transformer_2.", 1): v for k, v in low.items()}
    safetensors.torch.save_file({**high, **second}, str(fam_models / "loras" / "wan_both.safetensors"))
    safetensors.torch.save_file(second, str(fam_models / "loras" / "wan_t2only.safetensors"))

    oracle = raw(fam_models, "tiny-wan22")
    base2 = denoise(oracle.transformer_2, "wan")
    raw_load(oracle, fam_models, "wan_both", "x")
    assert oracle.get_list_adapters() == {"transformer": ["x"]}
    h0 = engine.load_pipeline("builtin:tiny-wan22")
    live, _ = engine.realize(load(engine, h0, "wan_both", name="x"))
    assert live.pipe.get_list_adapters() == {"transformer": ["x"]}
    for comp in ("transformer", "transformer_2"):
        got, want = denoise(getattr(live.pipe, comp), "wan"), denoise(getattr(oracle, comp), "wan")
        assert float((got - want).abs().max()) <= TOL
    assert torch.equal(denoise(live.pipe.transformer_2, "wan"), base2)

    oracle = raw(fam_models, "tiny-wan22")
    raw_load(oracle, fam_models, "wan_t2only", "y")
    assert oracle.get_list_adapters() == {}
    with pytest.raises(LoraOperationError) as refused:
        engine.realize(load(engine, h0, "wan_t2only", name="y"))
    assert refused.value.input_name == "lora_name" and "no layer" in str(refused.value)
    live, _ = engine.realize(h0)  # nothing half-done: the base renders as a fresh build
    assert engine.info(h0)["adapters"] == {}
    assert torch.equal(denoise(live.pipe.transformer_2, "wan"), base2)
    assert torch.equal(denoise(live.pipe.transformer, "wan"), denoise(oracle.transformer, "wan"))
