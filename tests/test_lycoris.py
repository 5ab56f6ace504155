"""LyCORIS files (LoCon with Tucker, LoHa, LoKr, DoRA, full diffs, mixed) through the engine.

Oracle: the producer's own forward pass (tests/lycoris_oracle.py): LyCORIS's network rebuilt from
the saved file and applied with the multiplier. Images agree within 2/255 (as docs/formats.md
states; fp32 on the CPU they agree to ~1e-6).
"""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPT, SIZE, STEPS, max_diff, raw_pipeline, render
from loragraph.base.errors import NodeInputError
from loragraph.loaders import transitions as tr
from loragraph.loaders.engine import Engine
from loragraph.nodes import widget_text as wt
from lycoris_oracle import (
    linear_image,
    make_network,
    merge_files,
    producer_apply,
    producer_image,
    scale_whole_delta,
    to_sgm_names,
    write_file,
)

pytestmark = pytest.mark.lowend  # in .ci/run's run on the lowest diffusers/peft too

TOL = 2 / 255

# name -> (algorithm, LyCORIS create_network options)
SD_FILES = {
    "ly_locon_tucker": ("lora", {"use_tucker": True}),
    "ly_loha": ("loha", {}),
    "ly_loha_tucker": ("loha", {"use_tucker": True}),
    "ly_lokr": ("lokr", {}),
    "ly_lokr_f4": ("lokr", {"factor": 4, "conv_dim": 2}),  # low-rank w2 halves; one layout peft lacks
    "ly_dora": ("lora", {"dora_wd": True}),
    "ly_doha": ("loha", {"dora_wd": True}),
    "ly_dokr": ("lokr", {"dora_wd": True}),
    "ly_full": ("full", {}),
    # norm-layer diffs (w_norm/b_norm): the UNet's GroupNorms/LayerNorms and, with whole encoder layers
    # as targets, the text encoder's LayerNorms; with full diffs, and with LoHa on the other layers
    "ly_full_norm": ("full", {"train_norm": True,
                              "preset": {"text_encoder_target_module": ["CLIPEncoderLayer"]}}),
    "ly_loha_norm": ("loha", {"train_norm": True,
                              "preset": {"text_encoder_target_module": ["CLIPEncoderLayer"]}}),
}


@pytest.fixture(scope="session")
def lycoris_dir(tmp_path_factory):
    from loragraph.builtin_models.tiny_sd import build_tiny_sd, build_tiny_sdxl

    root = tmp_path_factory.mktemp("lycoris_models")
    loras = root / "loras"
    for i, (name, (algo, kw)) in enumerate(SD_FILES.items()):
        write_file(loras / f"{name}.safetensors", build_tiny_sd, algo, 100 + i, **kw)
    # A preset's mix: LoRA on attention, LoHa on resnets, LoKr on the text encoder, full on conv_in.
    parts = {}
    for algo, seed in (("lora", 201), ("loha", 202), ("lokr", 203), ("full", 204)):
        parts[write_file(root / "parts" / f"{algo}.safetensors", build_tiny_sd, algo, seed)] = algo
    merge_files(loras / "ly_mixed.safetensors", {
        root / "parts" / "lora.safetensors": "attentions",
        root / "parts" / "loha.safetensors": "resnets",
        root / "parts" / "lokr.safetensors": "lora_te",
        root / "parts" / "full.safetensors": "conv_in",
    })
    write_file(loras / "ly_sdxl_lokr.safetensors", build_tiny_sdxl, "lokr", 301)
    write_file(loras / "ly_sdxl_loha.safetensors", build_tiny_sdxl, "loha", 302)
    # the same tensors under kohya sd-scripts' SDXL (SGM) UNet names: input_blocks_4_1_...
    to_sgm_names(loras / "ly_sdxl_loha.safetensors", loras / "ly_sdxl_loha_sgm.safetensors",
                 build_tiny_sdxl())
    # LoCon with norm diffs on SDXL: resnet GroupNorms (SGM in_layers_0/out_layers_0), the last GroupNorm
    # and conv_out (SGM out_0/out_2), both text encoders' LayerNorms
    write_file(loras / "ly_sdxl_norm.safetensors", build_tiny_sdxl, "lora", 303, train_norm=True,
               preset={"unet_target_name": ["conv_in", "conv_norm_out", "conv_out"],
                       "text_encoder_target_module": ["CLIPEncoderLayer"]})
    to_sgm_names(loras / "ly_sdxl_norm.safetensors", loras / "ly_sdxl_norm_sgm.safetensors",
                 build_tiny_sdxl())
    return root


DORA_FILES = {"ly_dora", "ly_doha", "ly_dokr"}


@pytest.fixture(scope="session")
def producer(lycoris_dir):
    """(file stem, multiplier) -> the producer's image, computed once per session.

    DoRA family at a multiplier != 1: the producer's merged weight at 1, scaled as docs/CONTRACT.md
    scales every algorithm (the whole delta), since LyCORIS's own multiplier is not linear there
    (docs/formats.md, "DoRA, and where the producers disagree")."""
    from loragraph.builtin_models.tiny_sd import build_tiny_sd, build_tiny_sdxl

    cache: dict[tuple, torch.Tensor] = {}

    def get(name: str, mult: float) -> torch.Tensor:
        key = (name, mult)
        if key not in cache:
            builder = build_tiny_sdxl if "sdxl" in name else build_tiny_sd
            path = lycoris_dir / "loras" / f"{name}.safetensors"
            image = linear_image if name in DORA_FILES and mult != 1 else producer_image
            cache[key] = image(builder, path, mult)
        return cache[key]

    return get


@pytest.fixture()
def engine(lycoris_dir, tmp_path):
    from loragraph import host

    host.configure(models_dir=lycoris_dir, output_dir=tmp_path / "output")
    return Engine()


def sample(engine, handle, seed=1):
    return engine.sample(handle, PROMPT, "", seed, STEPS, 7.0, SIZE, SIZE)


def load(engine, handle, name, strength=1.0, adapter=""):
    return tr.add_adapter(handle, engine.lora_spec(handle, f"{name}.safetensors", strength, adapter))


STRENGTHS = (1.0, 0.5)


@pytest.fixture(scope="session")
def base_image(lycoris_dir):
    from loragraph import host

    host.configure(models_dir=lycoris_dir)
    eng = Engine()
    return sample(eng, eng.load_pipeline("builtin:tiny-sd"))


@pytest.mark.parametrize("name", [*SD_FILES, "ly_mixed"])
def test_lycoris_file_matches_producer(engine, producer, base_image, name):
    """Each file at strength 1.0 and 0.5, unfused and fused, gives the producer's image; the unfuse
    after restores the base weights bit for bit."""
    h0 = engine.load_pipeline("builtin:tiny-sd")
    for strength in STRENGTHS:
        want = producer(name, strength)
        assert max_diff(want, base_image) > 0.05, "the LyCORIS file must visibly change the image"
        h = load(engine, h0, name, strength, "x")
        assert max_diff(sample(engine, h), want) <= TOL, (name, strength, "unfused")
    live = engine.live(h.source)
    before = {k: v.clone() for c in ("unet", "text_encoder")
              for k, v in getattr(live.pipe, c).state_dict().items() if "base_layer" in k}
    hf = wt.fuse(h, True, True, 1.0, False, "")  # at the last strength, 0.5
    assert max_diff(sample(engine, hf), want) <= TOL, (name, strength, "fused")
    engine.realize(tr.unfuse(hf, True, True))
    after = {k: v for c in ("unet", "text_encoder") for k, v in getattr(live.pipe, c).state_dict().items()}
    assert all(torch.equal(v, after[k]) for k, v in before.items()), "unfuse must restore the bits"


def test_lycoris_file_on_sdxl_two_text_encoders(engine, producer, lycoris_dir):
    """LyCORIS on SDXL (lora_te1_/lora_te2_), also in kohya sd-scripts' SGM UNet names."""
    h0 = engine.load_pipeline("builtin:tiny-sdxl")
    for name in ("ly_sdxl_lokr", "ly_sdxl_loha", "ly_sdxl_norm"):
        for strength in (1.0, 0.5):
            h = load(engine, h0, name, strength, "x")
            assert engine.info(h)["adapters"]["x"]["components"] == ["unet", "text_encoder", "text_encoder_2"]
            assert max_diff(sample(engine, h), producer(name, strength)) <= TOL, (name, strength)
    from loragraph.loaders.store import read_lora

    sgm = read_lora(lycoris_dir / "loras" / "ly_sdxl_loha_sgm.safetensors")
    assert any(m.name.startswith("lora_unet_input_blocks_") for m in sgm.modules)
    for name in ("ly_sdxl_loha", "ly_sdxl_norm"):
        h = load(engine, h0, f"{name}_sgm", 0.5, "x")
        assert engine.info(h)["warnings"] == [], name  # every module lands
        assert max_diff(sample(engine, h), producer(name, 0.5)) <= TOL, name
    sgm_names = {m.name for m in read_lora(lycoris_dir / "loras" / "ly_sdxl_norm_sgm.safetensors").modules}
    assert {"lora_unet_out_0", "lora_unet_out_2", "lora_unet_input_blocks_1_0_in_layers_0"} <= sgm_names


def test_lycoris_lokr_tucker_matches_training_network(engine, lycoris_dir):
    """LoKr with `lokr_t2`: LyCORIS 4.1.3 cannot rebuild it from weights (make_module_from_state_dict
    looks for lokr_w2_a on a Tucker module), so the oracle is the network that wrote the file."""
    from loragraph.builtin_models.tiny_sd import build_tiny_sd
    pipe = build_tiny_sd()
    pipe.set_progress_bar_config(disable=True)
    net = make_network(pipe, "lokr", 401, use_tucker=True, factor=4)
    path = lycoris_dir / "loras" / "ly_lokr_tucker.safetensors"
    net.save_weights(str(path), torch.float32, {})
    assert any(k.endswith("lokr_t2") for k in __import__("safetensors.torch").torch.load_file(str(path)))
    for lora in net.unet_loras + net.text_encoder_loras:
        lora.multiplier = 0.5
    want = render(pipe)
    h = load(engine, engine.load_pipeline("builtin:tiny-sd"), "ly_lokr_tucker", 0.5, "x")
    assert max_diff(sample(engine, h), want) <= TOL


def test_mixed_stack_every_node(engine, producer, lycoris_dir):
    """A LoCon, a LoHa and a LoKr on one pipeline with their own weights, through every node."""
    files = {"a": "ly_locon_tucker", "b": "ly_loha", "c": "ly_lokr"}
    weights = {"a": 0.7, "b": 0.5, "c": 1.2}
    loras = lycoris_dir / "loras"

    def oracle(active: dict[str, float], text_encoder: bool = True):
        raw = raw_pipeline()
        for k, w in active.items():
            producer_apply(raw, loras / f"{files[k]}.safetensors", w, text_encoder)
        return render(raw)

    h0 = engine.load_pipeline("builtin:tiny-sd")
    h = h0
    for k in ("b", "c", "a"):  # the LoCon last: peft nests its conv layers over the LoHa/LoKr ones
        h = load(engine, h, files[k], 1.0, k)
    h = wt.set_weights(h, "a, b, c", "0.7, 0.5, 1.2")
    want = oracle(weights)
    assert max_diff(sample(engine, h), want) <= TOL

    info = engine.info(h)
    assert ({n: a["algorithm"] for n, a in info["adapters"].items()}
            == {"b": "loha", "c": "lokr", "a": "locon"})
    assert info["adapters"]["b"]["rank"] == {"unet": 4, "text_encoder": 4}

    # fuse all three, then unfuse: bit-exact base weights
    live = engine.live(h.source)
    before = {k: v.clone() for k, v in live.pipe.unet.state_dict().items() if "base_layer" in k}
    hf = wt.fuse(h, True, True, 1.0, False, "")
    assert max_diff(sample(engine, hf), want) <= TOL
    hu = tr.unfuse(hf, True, True)
    assert max_diff(sample(engine, hu), want) <= TOL
    after = live.pipe.unet.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())

    # per-component weights: the text encoders off for b
    h2 = wt.set_weights(h, "a, b, c", "0.7, 0.5, 1.2", "0.7, 0.0, 1.2")
    raw = raw_pipeline()
    producer_apply(raw, loras / f"{files['a']}.safetensors", 0.7)
    producer_apply(raw, loras / f"{files['b']}.safetensors", 0.5, text_encoder=False)
    producer_apply(raw, loras / f"{files['c']}.safetensors", 1.2)
    assert max_diff(sample(engine, h2), render(raw)) <= TOL

    # text-encoder toggle off: no adapter touches the text encoder
    ht = tr.toggle_text_encoder(h, False, "all")
    assert max_diff(sample(engine, ht), oracle(weights, text_encoder=False)) <= TOL

    # delete b, unload, and a device move (to `meta`: this machine has no second device; diffusers'
    # own set_lora_device fails on LoHa/LoKr layers, which have no lora_A)
    hd = wt.delete(h, "b")
    assert max_diff(sample(engine, hd), oracle({"a": 0.7, "c": 1.2})) <= TOL
    assert max_diff(sample(engine, tr.unload(hd)), sample(engine, h0)) == 0
    hm = wt.set_device(hd, "c", "meta")
    engine.realize(hm)
    lokr = [m for _, m in live.pipe.unet.named_modules() if "c" in getattr(m, "lokr_w1", {})]
    assert lokr and all(m.lokr_w1["c"].device.type == "meta" for m in lokr)
    locon = [m for _, m in live.pipe.unet.named_modules() if "a" in getattr(m, "lora_A", {})]
    assert locon and all(m.lora_A["a"].weight.device.type == "cpu" for m in locon)
    engine.realize(tr.unload(hm))


def _norm_layers(model) -> dict[str, torch.Tensor]:
    """Every LayerNorm/GroupNorm weight and bias of a model, by name (peft's base_layer spelling dropped)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm)) and m.weight is not None:
            out[name.replace(".base_layer", "") + ".weight"] = m.weight.detach().clone()
            out[name.replace(".base_layer", "") + ".bias"] = m.bias.detach().clone()
    return out


def test_norm_layers_every_node(engine, lycoris_dir, tmp_path):
    """A file with norm-layer diffs (w_norm/b_norm) stacked with a LoKr, through every node; the oracle
    is the producer's forward pass with each module's multiplier set as the node asks."""
    from safetensors.torch import load_file

    loras = lycoris_dir / "loras"
    files = {"n": "ly_loha_norm", "c": "ly_lokr"}

    def oracle(active: dict[str, float], text_encoder: bool = True, te_weight: dict | None = None):
        raw = raw_pipeline()
        for k, w in active.items():
            net = producer_apply(raw, loras / f"{files[k]}.safetensors", w, text_encoder)
            for m in net.text_encoder_loras:
                m.multiplier = (te_weight or {}).get(k, w)
        return render(raw)

    h0 = engine.load_pipeline("builtin:tiny-sd")
    live = engine.live(h0.source)
    base_norms = {c: _norm_layers(getattr(live.pipe, c)) for c in ("unet", "text_encoder")}
    h = load(engine, load(engine, h0, files["n"], 1.0, "n"), files["c"], 1.0, "c")
    h = wt.set_weights(h, "n, c", "0.7, 1.2")
    want = oracle({"n": 0.7, "c": 1.2})
    assert max_diff(sample(engine, h), want) <= TOL
    # the norm diffs matter: without them (LoHa part only) the image is another one
    norm_free = loras / "ly_loha_no_norm.safetensors"
    from safetensors.torch import save_file

    save_file({k: v for k, v in load_file(str(loras / "ly_loha_norm.safetensors")).items()
               if not k.endswith(("w_norm", "b_norm"))}, str(norm_free))
    raw = raw_pipeline()
    producer_apply(raw, norm_free, 0.7)
    producer_apply(raw, loras / "ly_lokr.safetensors", 1.2)
    assert max_diff(render(raw), want) > 0.02

    info = engine.info(h)
    assert info["adapters"]["n"]["algorithm"] == "mixed (loha, norm)"
    assert info["adapters"]["n"]["components"] == ["unet", "text_encoder"]

    # fuse, unfuse: bit-exact norm weights and biases (the affine parameters fusion changes)
    hf = wt.fuse(h, True, True, 1.0, False, "")
    assert max_diff(sample(engine, hf), want) <= TOL
    fused = _norm_layers(live.pipe.unet)
    assert any(not torch.equal(v, fused[k]) for k, v in base_norms["unet"].items()), (
        "fusion changes the norms")
    assert max_diff(sample(engine, tr.unfuse(hf, True, True)), want) <= TOL
    for c in ("unet", "text_encoder"):
        now = _norm_layers(getattr(live.pipe, c))
        assert all(torch.equal(v, now[k]) for k, v in base_norms[c].items()), c

    # per-component weights, then the text-encoder switch
    h2 = wt.set_weights(h, "n, c", "0.7, 1.2", "0.2, 1.2")
    assert max_diff(sample(engine, h2), oracle({"n": 0.7, "c": 1.2}, te_weight={"n": 0.2})) <= TOL
    ht = tr.toggle_text_encoder(h, False, "all")
    assert max_diff(sample(engine, ht), oracle({"n": 0.7, "c": 1.2}, text_encoder=False)) <= TOL

    # SaveLoRA writes the w_norm/b_norm keys; LyCORIS's loader and ours read the file back
    out = engine.save_lora(h, "n", tmp_path / "n.safetensors", "kohya")
    saved, source = load_file(str(out)), load_file(str(loras / "ly_loha_norm.safetensors"))
    assert saved.keys() == source.keys() and all(torch.equal(saved[k], source[k]) for k in saved)

    # delete, unload: the norm layers are the base's again, bit for bit
    hd = wt.delete(h, "n")
    assert max_diff(sample(engine, hd), oracle({"c": 1.2})) <= TOL
    assert max_diff(sample(engine, tr.unload(hd)), sample(engine, h0)) == 0
    for c in ("unet", "text_encoder"):
        now = _norm_layers(getattr(live.pipe, c))
        assert now.keys() == base_norms[c].keys() and all(torch.equal(v, now[k])
                                                          for k, v in base_norms[c].items())

    # a device move takes the norm diffs along (to `meta`: this machine has no second device)
    hm = wt.set_device(h, "n", "meta")
    engine.realize(hm)
    moved = [m for _, m in live.pipe.unet.named_modules() if "n" in getattr(m, "lora_norm_weight", {})]
    assert moved and all(m.lora_norm_weight["n"].device.type == "meta" for m in moved)
    assert all(m.lora_norm_bias["n"].device.type == "meta" for m in moved)
    engine.realize(tr.unload(hm))


def test_norm_layers_follow_a_schedule(engine, lycoris_dir):
    """ScheduleAdapterWeights on an adapter with norm diffs: diffusers' per-step recipe on the producer's
    network (each UNet module's multiplier set at the end of every step)."""
    from safetensors.torch import load_file, save_file

    steps = 4
    path = lycoris_dir / "loras" / "ly_norm_only.safetensors"  # the norm diffs alone: nothing else moves
    save_file({k: v for k, v in load_file(str(lycoris_dir / "loras" / "ly_full_norm.safetensors")).items()
               if k.endswith(("w_norm", "b_norm"))}, str(path))
    h = load(engine, engine.load_pipeline("builtin:tiny-sd"), "ly_norm_only", 1.0, "n")
    ours = engine.sample(wt.schedule_weights(h, "n", "0:0, 0.5:1", "hold"), PROMPT, "", 1, steps, 7.0,
                         SIZE, SIZE)

    def recipe(per_step):
        raw = raw_pipeline()
        net = producer_apply(raw, path, 1.0)

        def set_unet(weight):
            for m in net.unet_loras:
                m.multiplier = weight

        set_unet(per_step[0])

        def on_step_end(_p, i, _t, _kw):
            if i + 1 < steps:
                set_unet(per_step[i + 1])
            return {}

        out = raw(PROMPT, negative_prompt="", num_inference_steps=steps, guidance_scale=7.0, width=SIZE,
                  height=SIZE, generator=torch.Generator("cpu").manual_seed(1), output_type="np",
                  callback_on_step_end=on_step_end)
        return torch.from_numpy(out.images).float()

    assert max_diff(ours, recipe([0.0, 0.0, 1.0, 1.0])) <= TOL
    assert max_diff(ours, recipe([0.0, 1.0, 1.0, 1.0])) > TOL  # one step off: the test can tell


def test_norm_diffs_that_do_not_fit_are_reported(engine, lycoris_dir):
    """A w_norm on a layer that is not a norm: unmatched with the reason, the rest lands; one of the
    wrong size: the file is refused as made for another model; one beside a diff: refused by name.
    Never loaded half-way, never skipped silently."""
    from loragraph.loaders.coverage import coverage
    from loragraph.loaders.lora_file import LoraFileError
    from loragraph.loaders.store import read_lora
    from safetensors.torch import load_file, save_file

    sd = load_file(str(lycoris_dir / "loras" / "ly_full_norm.safetensors"))
    h0 = engine.load_pipeline("builtin:tiny-sd")
    pipe = engine.live(h0.source).pipe

    def write(name, **extra):
        save_file({**sd, **extra}, str(lycoris_dir / "loras" / f"{name}.safetensors"))
        return read_lora(lycoris_dir / "loras" / f"{name}.safetensors")

    cov = coverage(pipe, write("ly_norm_on_conv", **{"lora_unet_conv_out.w_norm": torch.ones(32)}))
    assert [(u.module, u.reason) for u in cov.unmatched] == [
        ("lora_unet_conv_out", "w_norm on a Conv2d, not a LayerNorm or GroupNorm")]
    _, warnings = engine.realize(load(engine, h0, "ly_norm_on_conv", 1.0, "x"))
    assert any("lora_unet_conv_out" in w for w in warnings)

    write("ly_norm_size", **{"lora_unet_down_blocks_0_resnets_0_norm1.w_norm": torch.ones(7)})
    with pytest.raises(Exception, match=r"lora_name: .*norm1: shape mismatch: w_norm has 7 values, "
                                        r"the layer's weight 32\) — it is made for another base model"):
        engine.realize(load(engine, h0, "ly_norm_size", 1.0, "y"))

    lf = write("ly_norm_and_diff", **{"lora_unet_conv_in.w_norm": torch.ones(32)})
    with pytest.raises(LoraFileError, match=r"full with w_norm \(e\.g\. lora_unet_conv_in\."):
        coverage(pipe, lf)
    assert getattr(pipe.unet, "peft_config", None) is None or set(pipe.unet.peft_config) == {"x"}


def test_mixed_file_is_one_adapter(engine, lycoris_dir):
    from loragraph.loaders.store import read_lora

    lf = read_lora(lycoris_dir / "loras" / "ly_mixed.safetensors")
    assert lf.format == "lycoris"
    assert set(lf.summary()["algorithms"]) == {"lora", "locon", "loha", "lokr", "full"}
    h = load(engine, engine.load_pipeline("builtin:tiny-sd"), "ly_mixed", 1.0, "m")
    info = engine.info(h)
    assert info["list_adapters"] == {"unet": ["m"], "text_encoder": ["m"]}
    assert info["adapters"]["m"]["algorithm"] == "mixed (full, locon, loha, lokr)"


def test_save_lycoris_roundtrip(engine, producer, lycoris_dir, tmp_path):
    """SaveLoRA writes each family's kohya keys; the file loads here and in LyCORIS's own loader."""
    from safetensors.torch import load_file

    h0 = engine.load_pipeline("builtin:tiny-sd")
    h = wt.set_weights(load(engine, h0, "ly_mixed", 0.9, "m"), "", "0.4")  # the weight is not baked in
    out = engine.save_lora(h, "m", tmp_path / "saved.safetensors", "kohya")
    keys = load_file(str(out))
    assert any(k.endswith(".hada_w1_a") for k in keys) and any(k.endswith(".lokr_w1") for k in keys)
    assert any(k.endswith(".diff") for k in keys) and any(k.endswith(".lora_down.weight") for k in keys)
    want = producer("ly_mixed", 1.0)
    from loragraph.builtin_models.tiny_sd import build_tiny_sd

    assert max_diff(producer_image(build_tiny_sd, out, 1.0), want) <= TOL  # LyCORIS's loader
    (lycoris_dir / "loras" / "saved_m.safetensors").write_bytes(out.read_bytes())
    assert max_diff(sample(engine, load(engine, h0, "saved_m", 1.0, "s")), want) <= TOL  # ours
    with pytest.raises(NodeInputError, match="format"):
        engine.save_lora(h, "m", tmp_path / "saved_d.safetensors", "diffusers")


@pytest.mark.parametrize(
    "algo, options, named",
    [
        ("diag-oft", {}, r"OFT \(diag-OFT\)"),
        # BOFT on the UNet's attention only: LyCORIS cannot factor the tiny text encoder's width 37
        ("boft", {"preset": {"text_encoder_target_module": [], "enable_conv": False,
                             "unet_target_module": ["Transformer2DModel"], "unet_target_name": []}}, "BOFT"),
        ("glora", {}, "GLoRA"),
        ("ia3", {}, "IA3"),
    ],
)
def test_unsupported_algorithm_is_an_error_naming_it(engine, lycoris_dir, algo, options, named):
    """OFT, BOFT, GLoRA and IA3 are refused with the algorithm and sample keys, never skipped silently,
    and the pipeline is left as it was."""
    from loragraph.builtin_models.tiny_sd import build_tiny_sd
    from loragraph.loaders.coverage import coverage
    from loragraph.loaders.lora_file import LoraFileError
    from loragraph.loaders.store import read_lora

    path = write_file(lycoris_dir / "loras" / f"ly_bad_{algo}.safetensors", build_tiny_sd, algo, 501,
                      **options)
    h0 = engine.load_pipeline("builtin:tiny-sd")
    pipe = engine.live(h0.source).pipe
    with pytest.raises(LoraFileError, match=named + r" \(e\.g\. lora_"):
        coverage(pipe, read_lora(path))
    with pytest.raises(Exception, match=named):
        engine.realize(load(engine, h0, f"ly_bad_{algo}", 1.0, "o"))
    assert not getattr(pipe.unet, "peft_config", None) and not getattr(pipe.text_encoder, "peft_config", None)


def test_inspect_names_algorithm_per_module_and_fit(lycoris_dir, capsys):
    import json

    from loragraph.cli import main

    assert main(["inspect", str(lycoris_dir / "loras" / "ly_mixed.safetensors"), "--json"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    algos = line["summary"]["module_algorithms"]
    assert algos["lora_unet_conv_in"] == "full"
    assert algos["lora_te_encoder_layers_0_self_attn_q_proj"] == "lokr"
    assert algos["lora_unet_down_blocks_0_resnets_0_conv1"] == "loha"
    assert line["summary"]["base_model"] == "builtin:tiny-sd" and line["coverage"]["loadable"] is True


def test_block_weights_and_hotswap_routing(engine, lycoris_dir):
    """Per-block weights reach LoHa/LoKr layers as diffusers' set_adapters gives them (raw diffusers on
    the same layers is the oracle); a LyCORIS file never hot-swaps into a parked LoRA slot.

    The files leave out conv_in: diffusers' block weights fail (IndexError) on any adapter layer
    outside the down/mid/up blocks, plain LoRA included."""
    from conftest import raw_pipeline
    from loragraph.builtin_models.tiny_sd import build_tiny_sd
    from loragraph.loaders.formats.lycoris.build import load as build_adapter
    from loragraph.loaders.formats.lycoris.parse import parse
    from loragraph.loaders.store import read_lora

    for algo, seed, extra in (("loha", 601, {}), ("lokr", 602, {}), ("norm", 603, {"train_norm": True})):
        write_file(lycoris_dir / "loras" / f"ly_{algo}_blocks.safetensors", build_tiny_sd,
                   "lora" if algo == "norm" else algo, seed, preset={"unet_target_name": []}, **extra)

    blocks = {"unet": {"down": 0.0, "mid": 1.0, "up": 0.5}, "text_encoder": 0.3}
    h0 = engine.load_pipeline("builtin:tiny-sd")
    h = load(engine, load(engine, h0, "ly_loha_blocks", 1.0, "b"), "ly_lokr_blocks", 1.0, "c")
    h = load(engine, h, "ly_norm_blocks", 1.0, "d")  # LoCon plus norm diffs (w_norm/b_norm)
    unet_blocks = __import__("json").dumps(blocks["unet"])
    h = wt.set_weights(h, "b, c, d", "1.0", "", '{"b": ' + unet_blocks + ', "d": ' + unet_blocks + "}")
    raw = raw_pipeline()
    for name, adapter in (("ly_loha_blocks", "b"), ("ly_lokr_blocks", "c"), ("ly_norm_blocks", "d")):
        build_adapter(raw, parse(read_lora(lycoris_dir / "loras" / f"{name}.safetensors").state_dict),
                      adapter)
    def per_block():  # one dict per adapter: diffusers 0.41 expands a block dict in place
        return {"unet": dict(blocks["unet"]), "text_encoder": 1.0}

    raw.set_adapters(["b", "c", "d"], [per_block(), 1.0, per_block()])
    assert max_diff(sample(engine, h), render(raw)) <= TOL
    # the norm layers took their block's weight: down blocks at 0, so their diffs are off
    norm_scales = {n: m.scaling["d"] for n, m in engine.live(h0.source).pipe.unet.named_modules()
                   if "d" in getattr(m, "lora_norm_weight", {})}
    assert norm_scales["down_blocks.1.attentions.0.norm"] == 0.0
    assert norm_scales["up_blocks.0.attentions.0.transformer_blocks.0.norm1"] == 0.5

    with pytest.raises(NodeInputError,
                       match="block_weights: transformer blocks are for transformer pipelines"):
        wt.set_weights(h, "b", "1.0", "", '{"double": [1.0]}')

    # an adapter on conv_in: diffusers' block weights cannot scale it; a clear error, rolled back
    hc = wt.set_weights(load(engine, h0, "ly_loha", 1.0, "b"), "b", "1.0", "", '{"b": {"down": 0.5}}')
    with pytest.raises(Exception, match=r"block_weights: adapter 'b' adapts UNet layers outside .*conv_in"):
        engine.realize(hc)

    # plain LoRA parked, then a LyCORIS file comes: a normal load, not peft's hotswap
    live = engine.live(h0.source)
    engine.realize(load(engine, h0, "ly_locon_tucker", 1.0, "p"))
    live.ops.clear()
    engine.realize(load(engine, h0, "ly_loha", 1.0, "q"))
    assert "load_lora_weights" in live.ops and "hotswap" not in live.ops


def test_kohya_text_model_spelling(engine, producer, lycoris_dir):
    """kohya's `lora_te_text_model_…` names land like LyCORIS's `lora_te_encoder_…` ones (transformers
    >= 5 flattens CLIPTextModel)."""
    from safetensors.torch import load_file, save_file

    loras = lycoris_dir / "loras"
    sd = load_file(str(loras / "ly_loha.safetensors"))
    save_file({k.replace("lora_te_", "lora_te_text_model_"): v for k, v in sd.items()},
              str(loras / "ly_loha_tm.safetensors"))
    h0 = engine.load_pipeline("builtin:tiny-sd")
    h = load(engine, h0, "ly_loha_tm", 0.5, "x")
    assert max_diff(sample(engine, h), producer("ly_loha", 0.5)) <= TOL


def test_dora_on_the_input_axis_matches_training_network(engine, lycoris_dir, monkeypatch):
    """A DoRA magnitude per input column (LyCORIS `wd_on_output=False`, older files): LyCORIS 4.1.3
    cannot rebuild it from weights (its rebuilt module assumes the output axis), so the oracle is the
    network that wrote the file, at 1.0 and, scaled as docs/CONTRACT.md says, at 0.5. The deltas are
    loaded in chunks of a few layers here (at SD1.5 size a chunk is 64 MiB; the tiny model fits one)."""
    from loragraph.builtin_models.tiny_sd import build_tiny_sd
    from loragraph.loaders.formats.lycoris import build
    from safetensors.torch import load_file

    monkeypatch.setattr(build, "_CHUNK_BYTES", 16 * 1024)

    pipe = build_tiny_sd()
    pipe.set_progress_bar_config(disable=True)
    net = make_network(pipe, "lora", 411, dora_wd=True, wd_on_output=False)
    path = lycoris_dir / "loras" / "ly_dora_in.safetensors"
    net.save_weights(str(path), torch.float32, {})
    scales = [v for k, v in load_file(str(path)).items() if k.endswith("dora_scale")]
    assert scales and all(v.shape[0] == 1 and v.shape[1] > 1 for v in scales)  # one per input column
    want = {1.0: render(pipe)}
    scale_whole_delta(net.unet_loras + net.text_encoder_loras, 0.5)
    want[0.5] = render(pipe)
    h0 = engine.load_pipeline("builtin:tiny-sd")
    for strength in (1.0, 0.5):
        h = load(engine, h0, "ly_dora_in", strength, "x")
        assert engine.info(h)["warnings"] == []
        assert max_diff(sample(engine, h), want[strength]) <= TOL, strength
    assert max_diff(want[0.5], want[1.0]) > 0.02


@pytest.mark.parametrize("name", sorted(DORA_FILES))
def test_dora_strength_zero_is_off(engine, producer, base_image, name):
    """docs/CONTRACT.md: strength scales the whole delta, so 0 is the base image and 0.5 is halfway in
    weight space. (LyCORIS's own multiplier 0 still applies a DoRA module's low-rank update: that is
    the difference docs/formats.md states, checked here so the statement stays true.)"""
    from loragraph.builtin_models.tiny_sd import build_tiny_sd

    h0 = engine.load_pipeline("builtin:tiny-sd")
    assert max_diff(sample(engine, load(engine, h0, name, 0.0, "x")), base_image) <= 1e-6
    path = engine.lora_spec(h0, f"{name}.safetensors", 1.0, "").path
    assert max_diff(producer_image(build_tiny_sd, path, 0.0), base_image) > 0.02
    assert max_diff(producer_image(build_tiny_sd, path, 0.5), producer(name, 0.5)) > 0.02


# --- the fence entries LyCORIS files need (loaders/fence/lycoris.py) ----------------------------


def test_sgm_names_map_the_same_without_diffusers_private_converters(lycoris_dir):
    """kohya's SDXL (SGM) module names: diffusers' private converters (fast path) and the public
    `lora_state_dict` fallback place every module of the SGM file on the same layer."""
    from loragraph.builtin_models.tiny_sd import build_tiny_sdxl
    from loragraph.loaders import fence
    from loragraph.loaders.formats.lycoris import place
    from loragraph.loaders.store import read_lora

    pipe = build_tiny_sdxl()
    names = sorted({m.name for m in read_lora(lycoris_dir / "loras" / "ly_sdxl_loha_sgm.safetensors").modules
                    if place._SGM.match(m.name)})
    assert len(names) > 20
    with fence.fast_paths_mode("on"):
        fast = fence.sgm_module_paths(pipe, names)
    with fence.fast_paths_mode("off"):
        public = fence.sgm_module_paths(pipe, names)

    def flat(d):  # kohya names compare flat
        return {k: v.replace(".", "_") for k, v in d.items()}

    assert flat(fast) == flat(public) and set(fast) == set(names)


def test_lycoris_refused_with_versions_outside_the_verified_ones(engine, monkeypatch):
    """Outside the verified diffusers/peft versions a LyCORIS file is refused, naming the versions,
    and the pipeline is left as it was (the fence's fallback for its private peft flag)."""
    from loragraph.loaders import fence

    h0 = engine.load_pipeline("builtin:tiny-sd")
    before = sample(engine, h0)
    monkeypatch.setattr(fence, "installed_versions", lambda: {"diffusers": "0.40.0", "peft": "0.19.0"})
    fence.versions_verified.cache_clear()
    try:
        with fence.fast_paths_mode("auto"), pytest.raises(Exception,
                                                          match=r"LyCORIS .* need diffusers 0\.41/0\.42"):
            engine.realize(load(engine, h0, "ly_loha", 1.0, "x"))
        assert max_diff(sample(engine, h0), before) == 0
    finally:
        monkeypatch.undo()  # before the cache is cleared: nothing may cache the stand-in versions
        fence.versions_verified.cache_clear()
