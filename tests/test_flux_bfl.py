"""LyCORIS files on Flux in Black Forest Labs' module names: `lora_unet_double_blocks_0_img_attn_qkv`
(fused q,k,v), `lora_unet_single_blocks_0_linear1` (fused q,k,v,MLP), the final layer's swapped
modulation, ... as kohya sd-scripts and LyCORIS write them when trained on the original Flux model.

The files are made by the LyCORIS library on a tiny module in BFL's layout (`BflFlux` below), its
weights copied (concatenated where BFL fuses) from the tiny diffusers Flux transformer. Oracle: that
network rebuilt from the file on a fresh BFL module with the multiplier (the producer's own forward),
each BFL layer's effective weight read off its forward pass, split by this file's own table into a
fresh diffusers Flux, rendered by raw diffusers. 2/255, fp32, CPU.
"""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import max_diff
from loragraph.builtin_models.tiny_flux import build_tiny_flux
from loragraph.loaders import transitions as tr
from loragraph.loaders.engine import Engine
from loragraph.nodes import widget_text as wt

pytestmark = pytest.mark.lowend  # in .ci/run's run on the lowest diffusers/peft too

TOL = 2 / 255
SIZE = 32
PROMPT = "a red circle on a white background"
# Spread of the random weights added to LyCORIS's init: every algorithm changes the image by well
# over 0.01, and nothing saturates.
NOISE = 0.3

# BFL layer -> (diffusers layers in its row order, rows swapped in halves). Written from BFL's
# flux/modules/layers.py: SelfAttention.qkv rows q,k,v; SingleStreamBlock.linear1 rows q,k,v,mlp;
# LastLayer chunks (shift, scale) where diffusers' AdaLayerNormContinuous chunks (scale, shift).
_DOUBLE = {"img_attn.qkv": ["attn.to_q", "attn.to_k", "attn.to_v"], "img_attn.proj": ["attn.to_out.0"],
           "img_mlp.0": ["ff.net.0.proj"], "img_mlp.2": ["ff.net.2"], "img_mod.lin": ["norm1.linear"],
           "txt_attn.qkv": ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
           "txt_attn.proj": ["attn.to_add_out"], "txt_mlp.0": ["ff_context.net.0.proj"],
           "txt_mlp.2": ["ff_context.net.2"], "txt_mod.lin": ["norm1_context.linear"]}
_SINGLE = {"linear1": ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"], "linear2": ["proj_out"],
           "modulation.lin": ["norm.linear"]}
_TOP = {"img_in": "x_embedder", "txt_in": "context_embedder",
        "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
        "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
        "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
        "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
        "final_layer.linear": "proj_out", "final_layer.adaLN_modulation.1": "norm_out.linear"}
_SWAPPED = {"final_layer.adaLN_modulation.1"}


def bfl_layout(transformer) -> dict[str, tuple[list[str], bool]]:
    """{BFL layer path: (diffusers layer paths, swapped)} for the diffusers Flux `transformer`."""
    out = {}
    for i in range(len(transformer.transformer_blocks)):
        out |= {f"double_blocks.{i}.{k}": ([f"transformer_blocks.{i}.{p}" for p in v], False)
                for k, v in _DOUBLE.items()}
    for i in range(len(transformer.single_transformer_blocks)):
        out |= {f"single_blocks.{i}.{k}": ([f"single_transformer_blocks.{i}.{p}" for p in v], False)
                for k, v in _SINGLE.items()}
    out |= {k: ([v], k in _SWAPPED) for k, v in _TOP.items()}
    return out


class DoubleStreamBlock(torch.nn.Module):
    """BFL's double-stream block, its linear layers only (LyCORIS targets blocks by class name)."""

    def __init__(self):
        super().__init__()
        for side in ("img", "txt"):
            setattr(self, f"{side}_attn", torch.nn.Module())
            setattr(self, f"{side}_mlp", torch.nn.Sequential(torch.nn.Identity(), torch.nn.GELU("tanh"),
                                                              torch.nn.Identity()))
            setattr(self, f"{side}_mod", torch.nn.Module())


class SingleStreamBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.modulation = torch.nn.Module()


class BflFlux(torch.nn.Module):
    """Flux's linear layers under BFL's module names, holding the diffusers transformer's weights
    (concatenated where BFL fuses, halves swapped where BFL's chunk order differs)."""

    def __init__(self, transformer):
        super().__init__()
        self.layout = bfl_layout(transformer)
        self.double_blocks = torch.nn.ModuleList(DoubleStreamBlock() for _ in transformer.transformer_blocks)
        self.single_blocks = torch.nn.ModuleList(SingleStreamBlock()
                                                 for _ in transformer.single_transformer_blocks)
        self.time_in, self.vector_in, self.final_layer = (torch.nn.Module(), torch.nn.Module(),
                                                          torch.nn.Module())
        self.final_layer.adaLN_modulation = torch.nn.Sequential(torch.nn.SiLU(), torch.nn.Identity())
        for path, (theirs, swapped) in self.layout.items():
            layers = [transformer.get_submodule(p) for p in theirs]
            w = torch.cat([la.weight.detach() for la in layers])
            b = torch.cat([la.bias.detach() for la in layers])
            if swapped:
                w, b = _swap(w), _swap(b)
            lin = torch.nn.Linear(w.shape[1], w.shape[0])
            with torch.no_grad():
                lin.weight.copy_(w)
                lin.bias.copy_(b)
            parent, _, leaf = path.rpartition(".")
            owner = self.get_submodule(parent) if parent else self
            if isinstance(owner, torch.nn.Sequential):
                owner[int(leaf)] = lin
            else:
                owner.add_module(leaf, lin)
        self.eval()

    def effective(self, path: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of a BFL layer as its forward pass computes them (LyCORIS patches `forward`)."""
        lin = self.get_submodule(path)
        with torch.no_grad():
            bias = lin(torch.zeros(1, lin.in_features))[0]
            weight = (lin(torch.eye(lin.in_features)) - bias).T
        return weight, bias


def _swap(t: torch.Tensor) -> torch.Tensor:
    return torch.cat(t.chunk(2)[::-1])


def bfl_network(bfl: BflFlux, algo: str, seed: int, **kwargs):
    """A LyCORIS network on every linear layer of the BFL module, its weights drawn from `seed`."""
    import lycoris.kohya as lk
    from lycoris.kohya import create_network

    lk.PRESET["loragraph-flux-bfl"] = {
        "enable_conv": False, "unet_target_module": ["DoubleStreamBlock", "SingleStreamBlock"],
        "unet_target_name": [p for p in bfl.layout if not p.startswith(("double_blocks", "single_blocks"))],
        "text_encoder_target_module": [], "text_encoder_target_name": [],
    }
    torch.manual_seed(seed)
    net = create_network(1.0, 4, 2, None, None, bfl, algo=algo, preset="loragraph-flux-bfl",
                         warn_on_unmatched=False, **kwargs)
    net.apply_to(None, bfl, False, True)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * NOISE)
    return net


def into_flux(weights: dict[str, tuple[torch.Tensor, torch.Tensor]]):
    """A fresh tiny Flux holding the BFL layers' (weight, bias), split (and swapped) into its layers."""
    pipe = build_tiny_flux()
    with torch.no_grad():
        for path, (theirs, swapped) in bfl_layout(pipe.transformer).items():
            w, b = weights[path]
            if swapped:
                w, b = _swap(w), _swap(b)
            layers = [pipe.transformer.get_submodule(p) for p in theirs]
            sizes = [la.out_features for la in layers]
            for la, wi, bi in zip(layers, w.split(sizes), b.split(sizes), strict=True):
                la.weight.copy_(wi)
                la.bias.copy_(bi)
    return pipe


def scaled(before: dict, after: dict, strength: float) -> dict:
    """Each layer's weights with its delta (after - before) scaled by `strength`."""
    return {p: tuple(b0 + strength * (b1 - b0) for b0, b1 in zip(before[p], after[p], strict=True))
            for p in before}


def producer_pipe(path, multiplier: float, whole: bool = False):
    """The tiny Flux with the BFL layers' effective weights under the producer's network rebuilt from
    `path` with `multiplier`; `whole`: at multiplier 1, each layer's delta then scaled by `multiplier`
    (the contract's strength for the DoRA family, whose producer keeps its low-rank update whole)."""
    from lycoris.kohya import create_network_from_weights

    bfl = BflFlux(build_tiny_flux().transformer)
    before = {p: bfl.effective(p) for p in bfl.layout}
    net, _ = create_network_from_weights(1.0 if whole else multiplier, str(path), None, None, bfl)
    net.apply_to(None, bfl, False, True)
    after = {p: bfl.effective(p) for p in bfl.layout}
    return into_flux(scaled(before, after, multiplier) if whole else after)


def render(pipe, seed: int = 1) -> torch.Tensor:
    out = pipe(PROMPT, negative_prompt="", num_inference_steps=2, guidance_scale=3.5, width=SIZE, height=SIZE,
               num_images_per_prompt=1, generator=torch.Generator("cpu").manual_seed(seed), output_type="np")
    return torch.from_numpy(out.images).float()


# name -> (LyCORIS algo, create_network options)
FILES = {
    "bfl_lokr": ("lokr", {"factor": 4}),  # w2 of 24 rows (qkv), 56 (linear1): shares become full deltas
    "bfl_lokr_f16": ("lokr", {"factor": 16}),  # w2 of 16 rows: each share of 32 is whole rows of w1
    "bfl_loha": ("loha", {}),
    "bfl_full": ("full", {}),
    "bfl_dora": ("lora", {"dora_wd": True}),
    # magnitude per input column: its norm spans q, k, v and the MLP's rows of linear1 together
    "bfl_dora_in": ("lora", {"dora_wd": True, "wd_on_output": False}),
    "bfl_doha": ("loha", {"dora_wd": True}),
}
# what LoRAInfo reports; a file the fixture merges: LoCon everywhere but LoHa on single block 1
ALGORITHM = {"bfl_dora": "dora", "bfl_dora_in": "dora", "bfl_doha": "doha", "bfl_mixed": "mixed (loha, lora)"}
# The DoRA family's strength scales its whole delta (docs/CONTRACT.md); LyCORIS's multiplier keeps the
# update whole
WHOLE = {"bfl_dora", "bfl_dora_in", "bfl_doha"}
# LyCORIS 4.1.3 cannot rebuild a DoRA on the input axis from weights (its rebuilt module assumes the
# output axis): the oracle is the network that wrote the file; {name: (weights before, after)}
TRAINED: dict[str, tuple[dict, dict]] = {}


@pytest.fixture(scope="module")
def bfl_dir(tmp_path_factory):
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("flux-bfl")
    (root / "loras").mkdir()
    for i, (name, (algo, kw)) in enumerate(FILES.items()):
        bfl = BflFlux(build_tiny_flux().transformer)
        before = {p: bfl.effective(p) for p in bfl.layout}
        net = bfl_network(bfl, algo, 500 + i, **kw)
        net.save_weights(str(root / "loras" / f"{name}.safetensors"), torch.float32, {})
        if name == "bfl_dora_in":
            TRAINED[name] = (before, {p: bfl.effective(p) for p in bfl.layout})
    net = bfl_network(BflFlux(build_tiny_flux().transformer), "lora", 520)
    net.save_weights(str(root / "locon.safetensors"), torch.float32, {})
    loha = load_file(str(root / "loras" / "bfl_loha.safetensors"))
    mixed = {k: v for k, v in load_file(str(root / "locon.safetensors")).items()
             if not k.startswith("lora_unet_single_blocks_1_")}
    mixed |= {k: v for k, v in loha.items() if k.startswith("lora_unet_single_blocks_1_")}
    save_file(mixed, str(root / "loras" / "bfl_mixed.safetensors"))
    # the LoHa file without double block 1 and single block 0: the oracle of block weight 0 on them
    sd = load_file(str(root / "loras" / "bfl_loha.safetensors"))
    save_file({k: v for k, v in sd.items()
               if not k.startswith(("lora_unet_double_blocks_1_", "lora_unet_single_blocks_0_"))},
              str(root / "loras" / "bfl_loha_part.safetensors"))
    return root


@pytest.fixture()
def engine(bfl_dir, tmp_path):
    from loragraph import host

    host.configure(models_dir=bfl_dir, output_dir=tmp_path / "output")
    return Engine()


def sample(engine, handle, seed=1):
    return engine.sample(handle, PROMPT, "", seed, 2, 3.5, SIZE, SIZE)


def load(engine, handle, name, strength=1.0, adapter="x"):
    return tr.add_adapter(handle, engine.lora_spec(handle, f"{name}.safetensors", strength, adapter))


@pytest.mark.parametrize("name", [*FILES, "bfl_mixed"])
def test_bfl_lycoris_file_matches_producer(engine, bfl_dir, name):
    """Each file at strength 1.0 and 0.5, unfused and fused, gives the producer's image; every module
    lands (fused qkv and linear1 split by the model's sizes, the final modulation's halves swapped)."""
    from safetensors.torch import load_file

    keys = load_file(str(bfl_dir / "loras" / f"{name}.safetensors"))
    assert any(k.startswith("lora_unet_single_blocks_0_linear1.") for k in keys)
    assert any(k.startswith("lora_unet_final_layer_adaLN_modulation_1.") for k in keys)
    h0 = engine.load_pipeline("builtin:tiny-flux")
    base = sample(engine, h0)
    for strength in (1.0, 0.5):
        if name in TRAINED:
            want = render(into_flux(scaled(*TRAINED[name], strength)))
        else:
            want = render(producer_pipe(bfl_dir / "loras" / f"{name}.safetensors", strength, name in WHOLE))
        assert max_diff(want, base) > 0.01, "the file must visibly change the image"
        h = load(engine, h0, name, strength)
        info = engine.info(h)
        assert info["warnings"] == [], info["warnings"]
        assert max_diff(sample(engine, h), want) <= TOL, (name, strength, "unfused")
    assert info["adapters"]["x"]["algorithm"] == ALGORITHM.get(name, FILES.get(name, ("",))[0])
    live = engine.live(h.source)
    before = {k: v.clone() for k, v in live.pipe.transformer.state_dict().items() if "base_layer" in k}
    hf = wt.fuse(h, True, True, 1.0, False, "")  # at the last strength
    assert max_diff(sample(engine, hf), want) <= TOL, (name, "fused")
    engine.realize(tr.unfuse(hf, True, True))
    after = live.pipe.transformer.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items()), "unfuse must restore the bits"


def test_bfl_coverage_and_inspect_count_file_modules(bfl_dir):
    """Coverage counts the file's modules (a fused one once), all landed."""
    from loragraph.loaders.coverage import coverage
    from loragraph.loaders.store import read_lora

    lf = read_lora(bfl_dir / "loras" / "bfl_lokr.safetensors")
    cov = coverage(build_tiny_flux(), lf)
    assert cov.complete and cov.matched == len(lf.modules), cov.message()
    assert cov.per_component == {"transformer": {"matched": len(lf.modules), "unmatched": 0}}


def test_bfl_lokr_on_fused_layers_logs_full_deltas(engine, caplog, monkeypatch):
    """LoKr rows of a fused module do not split into LoKr factors (w2's 24 and 56 rows are not whole
    shares of 32): the 4 qkv and 2 linear1 modules load as full deltas, and the log says so. Those
    deltas are made when their chunk loads: in chunks of a few KiB (a full-size Flux file's are
    64 MiB) the image is the same to the bit."""
    from loragraph.loaders.formats.lycoris import build

    with caplog.at_level(logging.INFO, logger="loragraph.loaders.formats.lycoris"):
        whole = sample(engine, load(engine, engine.load_pipeline("builtin:tiny-flux"), "bfl_lokr"))
    said = [r.getMessage() for r in caplog.records if "loaded as full deltas" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("6 LoKr module(s) on fused Flux layers"), said
    monkeypatch.setattr(build, "_CHUNK_BYTES", 4096)
    fresh = Engine()
    assert torch.equal(sample(fresh, load(fresh, fresh.load_pipeline("builtin:tiny-flux"), "bfl_lokr")),
                       whole)


@pytest.mark.parametrize("name, compute", [("bfl_lokr", "lokr_delta"), ("bfl_dora", "dora_delta")])
def test_bfl_fused_delta_made_once_per_module(engine, monkeypatch, name, compute):
    """A fused module's full delta (LoKr shares, DoRA) is computed once and shared by its 3-4 layers."""
    from loragraph.loaders.formats.lycoris import deltas
    from loragraph.loaders.store import read_lora

    calls: list[str] = []
    real = getattr(deltas, compute)
    monkeypatch.setattr(deltas, compute, lambda m, base: calls.append(m.name) or real(m, base))
    engine.realize(load(engine, engine.load_pipeline("builtin:tiny-flux"), name))
    fused = {m.name for m in read_lora(engine.lora_spec(engine.load_pipeline("builtin:tiny-flux"),
                                                         f"{name}.safetensors", 1.0, "").path).modules
             if m.name.endswith(("_qkv", "_linear1"))}
    assert fused and sorted(c for c in calls if c in fused) == sorted(fused)  # once each


def test_bfl_block_weights_by_index(engine):
    """Block weight 0 on double block 1 and single block 0 equals the file without those blocks' modules."""
    h0 = engine.load_pipeline("builtin:tiny-flux")
    h = load(engine, h0, "bfl_loha", 1.0, "a")
    want = sample(engine, load(engine, h0, "bfl_loha_part", 1.0, "o"))
    got = sample(engine, wt.set_weights(h, "a", "1.0", "", '{"double": {"1": 0.0}, "single": [0.0]}'))
    assert max_diff(got, want) <= 1 / 255
    assert max_diff(got, sample(engine, h)) > 1e-3, "the blocks must matter"


def test_bfl_adapter_saved_as_kohya_loads_back(engine, bfl_dir):
    """SaveLoRA writes a BFL-named adapter's modules under their own names: loaded back, the same image."""
    h0 = engine.load_pipeline("builtin:tiny-flux")
    h = load(engine, h0, "bfl_mixed", 0.5, "m")
    want = sample(engine, h)
    out = engine.save_lora(h, "m", bfl_dir / "loras" / "bfl_saved.safetensors", "kohya")
    from safetensors.torch import load_file

    assert any(k.startswith("lora_unet_single_blocks_0_linear1.") for k in load_file(str(out)))
    assert max_diff(sample(engine, load(engine, h0, "bfl_saved", 0.5, "s")), want) <= 1e-5
