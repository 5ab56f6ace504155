"""LoRA files: formats, hashes, summary, cache, coverage, bad files, kohya round trip."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch
from loragraph import testing
from loragraph.builtin_models.tiny_sd import build_tiny_sd, build_tiny_sdxl
from loragraph.loaders import formats, store
from loragraph.loaders.coverage import coverage
from loragraph.loaders.formats import kohya
from loragraph.loaders.loading import load_lora_file
from loragraph.loaders.lora_file import LoraFileError
from loragraph.loaders.store import read_lora

pytestmark = pytest.mark.lowend  # in .ci/run's run on the lowest diffusers/peft too

IMG = 32  # small images and few steps: enough to carry a LoRA's effect, fast on 2 cores
STEPS = 2


def render(pipe, seed: int = 0) -> torch.Tensor:
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        "a red circle",
        num_inference_steps=STEPS,
        guidance_scale=5.0,
        width=IMG,
        height=IMG,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
    )
    return torch.from_numpy(out.images)


def lora_layers(model) -> dict:
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def deltas(pipe, adapter: str) -> dict[str, torch.Tensor]:
    """Every adapted layer's merged weight delta (scale included): what the LoRA does, exactly."""
    out = {}
    for component in ("unet", "text_encoder", "text_encoder_2"):
        model = getattr(pipe, component, None)
        if model is not None:
            out.update(
                {f"{component}.{n}": m.get_delta_weight(adapter) for n, m in lora_layers(model).items()}
            )
    return out


def assert_same_deltas(a: dict, b: dict, factor: float = 1.0) -> None:
    assert a.keys() == b.keys() and a
    for name, value in a.items():
        torch.testing.assert_close(value * factor, b[name], rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def sd_pipe():
    """Read-only SD pipeline for coverage checks (nothing here may load into it)."""
    return testing.tiny_pipeline("sd")


@pytest.fixture(scope="module")
def sdxl_pipe():
    return testing.tiny_pipeline("sdxl")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("loras")
    w = testing.write_lora_file
    out = {
        "diffusers": w(d / "sd_diffusers.safetensors", "sd", "diffusers", rank=4, alpha=2, seed=1),
        "peft": w(d / "sd_peft.safetensors", "sd", "peft", rank=4, seed=2),
        "kohya": w(d / "sd_kohya.safetensors", "sd", "kohya", rank=4, alpha=2, seed=1),
        "diffusers-old": w(d / "sd_old.safetensors", "sd", "diffusers-old", rank=4, alpha=2, seed=1),
        "xl_diffusers": w(d / "xl_diffusers.safetensors", "sdxl", "diffusers", rank=4, seed=5),
        "xl_kohya": w(d / "xl_kohya.safetensors", "sdxl", "kohya", rank=4, alpha=8, seed=6),
        "pt": w(d / "sd_pickled.pt", "sd", "kohya", rank=4, alpha=2, seed=1),
    }
    out.update({f"bad_{k}": v for k, v in testing.write_bad_files(d / "bad").items()})
    return out


# --- formats -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, fmt",
    [
        ("diffusers", "diffusers"),
        ("peft", "peft"),
        ("kohya", "kohya"),
        ("diffusers-old", "diffusers-old"),
        ("xl_diffusers", "diffusers"),
        ("xl_kohya", "kohya"),
        ("pt", "kohya"),
    ],
)
def test_format_detection(files, name, fmt):
    assert read_lora(files[name]).format == fmt


def test_format_detection_from_keys():
    d = formats.detect_format
    assert d(["lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"]) == "kohya"
    assert d(["down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight"]) == (
        "diffusers-old"
    )
    assert d(["text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.down.weight"]) == (
        "diffusers"
    )
    assert d(["base_model.model.down_blocks.1.attentions.0.proj_in.lora_A.weight"]) == "peft"
    assert d(["unet.mid_block.attentions.0.proj_in.lora_B.weight"]) == "diffusers"


def test_writer_is_deterministic(tmp_path):
    a = testing.write_lora_file(tmp_path / "a.safetensors", "sd", "kohya", seed=3)
    b = testing.write_lora_file(tmp_path / "b.safetensors", "sd", "kohya", seed=3)
    c = testing.write_lora_file(tmp_path / "c.safetensors", "sd", "kohya", seed=4)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()


def test_make_lora_state_dict_leaves_the_pipe_alone(sd_pipe):
    sds = testing.make_lora_state_dict(sd_pipe, rank=2, components=("unet", "text_encoder"))
    assert not getattr(sd_pipe.unet, "peft_config", None) and not lora_layers(sd_pipe.unet)
    assert not lora_layers(sd_pipe.text_encoder)
    b = [v for k, v in sds["unet"].items() if ".lora_B." in k]
    assert b and all(t.abs().sum() > 0 for t in b)  # non-zero B: the LoRA does something
    assert all(torch.isfinite(t).all() for sd in sds.values() for t in sd.values())


# --- alpha -------------------------------------------------------------------------------------


def test_kohya_alpha_half_strength(tmp_path):
    """rank 8, alpha 4 acts exactly as rank 8, alpha 8 with lora_up halved: scale = alpha / rank."""
    pipe = testing.tiny_pipeline("sd")
    sds = testing.make_lora_state_dict(pipe, rank=8, seed=7)
    halved = {c: {k: (v / 2 if ".lora_B." in k else v) for k, v in sd.items()} for c, sd in sds.items()}
    modules = {
        c: [k.removesuffix(".lora_A.weight") for k in sd if k.endswith(".lora_A.weight")]
        for c, sd in sds.items()
    }

    def alpha(value: float) -> dict:
        return {c: dict.fromkeys(names, value) for c, names in modules.items()}

    a4, a8, full = (
        tmp_path / "a4.safetensors",
        tmp_path / "a8_halved.safetensors",
        tmp_path / "a8.safetensors",
    )
    kohya.save_kohya(sds, alpha(4.0), a4, sdxl=False)
    kohya.save_kohya(halved, alpha(8.0), a8, sdxl=False)
    kohya.save_kohya(sds, alpha(8.0), full, sdxl=False)
    found = []
    for path in (a4, a8, full):
        p = build_tiny_sd()
        p.load_lora_weights(formats.pipeline_state_dict(p, read_lora(path))[0], adapter_name="x")
        found.append(deltas(p, "x"))
    assert len(found[0]) == 68
    assert_same_deltas(found[0], found[1])
    assert_same_deltas(found[0], found[2], factor=2.0)


def test_diffusers_metadata_alpha_is_honoured(files):
    """A diffusers file keeps alpha != rank only in its header; load_lora_file passes it on.

    Same seed and alpha: the diffusers, kohya and old-format files must make the same image. A plain
    `load_lora_weights(dict)` drops the header (alpha falls back to rank) - which is why the helper exists.
    """
    found = []
    for name in ("diffusers", "kohya", "diffusers-old"):
        p = build_tiny_sd()
        load_lora_file(p, read_lora(files[name]), "x")
        found.append(deltas(p, "x"))
    assert_same_deltas(found[0], found[1])
    assert_same_deltas(found[0], found[2])
    p = build_tiny_sd()
    sd, meta = formats.pipeline_state_dict(p, read_lora(files["diffusers"]))
    assert meta is not None and meta["unet.lora_alpha"] == 2
    p.load_lora_weights(sd, adapter_name="x")
    assert_same_deltas(found[0], deltas(p, "x"), factor=2.0)  # alpha fell back to rank 4


# --- summary and hashes ------------------------------------------------------------------------


def test_summary_fields(tmp_path):
    tags = {f"tag{i:02d}": 100 - i for i in range(25)}
    meta = {
        "ss_tag_frequency": json.dumps({"10_mychar": {**tags, " mychar ": 500}, "5_bg": {"tag03": 50}}),
        "ss_output_name": "MyChar",
        "modelspec.trigger_phrase": "mychar person",
        "ss_base_model_version": "sd_v1",
        "ss_sd_model_name": "v1-5-pruned.safetensors",
    }
    path = testing.write_lora_file(
        tmp_path / "meta.safetensors", "sd", "kohya", rank=4, alpha=2, metadata=meta
    )
    lf = read_lora(path)
    s = lf.summary()
    json.dumps(s)  # JSON-able
    assert s["format"] == "kohya" and s["ranks"] == [4] and s["alphas"] == [2.0]
    assert s["components"] == {"unet": 48, "text_encoder": 20}
    assert s["trigger_words"] == ["mychar person"]  # the trigger phrase first; tags only without one
    assert len(s["tag_frequency"]) == 20 and s["tag_frequency"]["mychar"] == 500
    assert s["tag_frequency"]["tag03"] == 97 + 50  # merged over dataset folders
    assert s["training"]["ss_sd_model_name"] == "v1-5-pruned.safetensors"
    assert s["title"] == "MyChar"
    assert s["base_model"] == "other"  # the tiny model's 32-wide context is no real base model
    data = path.read_bytes()
    assert s["sha256"] == hashlib.sha256(data).hexdigest()
    n = int.from_bytes(data[:8], "little")
    assert lf.addnet_hash == hashlib.sha256(data[8 + n :]).hexdigest()
    assert s["short_hash"] == lf.addnet_hash[:12]  # A1111's "Lora hashes" value


def test_summary_alphas_absent_and_from_metadata(files):
    assert read_lora(files["peft"]).summary()["alphas"] == [4.0]  # from lora_adapter_metadata
    old = read_lora(files["diffusers-old"]).summary()
    assert old["alphas"] == [None] and old["ranks"] == [4]


def _fake(tmp_path: Path, name: str, shapes: dict[str, tuple[int, ...]], meta=None) -> Path:
    path = tmp_path / name
    safetensors.torch.save_file({k: torch.zeros(s) for k, s in shapes.items()}, str(path), metadata=meta)
    return path


@pytest.mark.parametrize(
    "shapes, meta, expected",
    [
        (
            {
                "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (
                    1,
                    768,
                )
            },
            None,
            "SD1.x",
        ),
        (
            {"unet.up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v.lora_A.weight": (1, 1024)},
            None,
            "SD2.x",
        ),
        (
            {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": (1, 2048)},
            None,
            "SDXL",
        ),
        ({"lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (1, 1280)}, None, "SDXL"),
        (
            {"unet.down_blocks.2.attentions.0.transformer_blocks.9.attn1.to_q.lora_A.weight": (1, 1280)},
            None,
            "SDXL",
        ),
        ({"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (1, 1024)}, None, "SD2.x"),
        (
            {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": (1, 320)},
            {"ss_base_model_version": "sd_v1"},
            "SD1.x",
        ),
        ({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": (1, 3072)}, None, "other"),
    ],
)
def test_base_model_guess(tmp_path, shapes, meta, expected):
    up = {k.replace("lora_down", "lora_up").replace("lora_A", "lora_B"): (8, 1) for k in shapes}
    lf = read_lora(_fake(tmp_path, "x.safetensors", {**shapes, **up}, meta))
    assert lf.summary()["base_model"] == expected, lf.summary()["base_model_reason"]


# --- cache -------------------------------------------------------------------------------------


def test_cache_reads_once_and_notices_changes(files, tmp_path):
    store.clear_lora_cache()
    path = tmp_path / "a.safetensors"
    shutil.copy(files["kohya"], path)
    first = read_lora(path)
    stats = store.lora_cache_stats()
    assert (stats["parses"], stats["hash_reads"]) == (1, 1)
    assert read_lora(path) is first
    assert store.file_sha256(path) == first.sha256
    stats = store.lora_cache_stats()
    assert (stats["parses"], stats["hash_reads"], stats["hits"]) == (1, 1, 1)

    st = os.stat(path)  # touched: hashed again, same content -> not parsed again
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert read_lora(path) is first
    assert store.lora_cache_stats()["hash_reads"] == 2 and store.lora_cache_stats()["parses"] == 1

    twin = tmp_path / "twin.safetensors"  # same content under another name: one parsed object
    shutil.copy(path, twin)
    other = read_lora(twin)
    assert other.state_dict is first.state_dict and other.path == str(twin)
    assert store.lora_cache_stats()["parses"] == 1

    testing.write_lora_file(path, "sd", "kohya", seed=99)  # changed on disk -> read again
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
    changed = read_lora(path)
    assert changed.sha256 != first.sha256 and store.lora_cache_stats()["parses"] == 2


def test_cache_is_bounded(files):
    store.clear_lora_cache()
    try:
        a, b = read_lora(files["kohya"]), read_lora(files["diffusers"])
        store.set_lora_cache_limit(max(a.size, b.size) + 1)
        stats = store.lora_cache_stats()
        assert stats["entries"] == 1 and stats["evictions"] == 1 and stats["bytes"] <= stats["max_bytes"]
        read_lora(files["kohya"])  # evicted: parsed again
        assert store.lora_cache_stats()["parses"] == 3
    finally:
        store.set_lora_cache_limit(store.DEFAULT_CACHE_BYTES)


def test_state_dict_is_read_only_and_copies_are_independent(files):
    lf = read_lora(files["kohya"])
    with pytest.raises(TypeError):
        lf.state_dict["x"] = torch.zeros(1)  # type: ignore[index]
    sd, _ = formats.pipeline_state_dict(testing.tiny_pipeline("sd"), lf)
    key = next(iter(sd))
    sd[key].zero_()
    assert lf.state_dict[key].abs().sum() > 0


# --- coverage ----------------------------------------------------------------------------------


def test_coverage_full(sd_pipe, files):
    for name in ("diffusers", "peft", "kohya", "diffusers-old", "pt"):
        cov = coverage(sd_pipe, read_lora(files[name]))
        assert cov.complete and cov.landed_fraction == 1.0 and cov.loadable, cov.message()
    cov = coverage(sd_pipe, read_lora(files["kohya"]))
    assert dict(cov.per_component) == {
        "unet": {"matched": 48, "unmatched": 0},
        "text_encoder": {"matched": 20, "unmatched": 0},
    }
    assert "all 68 LoRA modules land" in cov.message()
    assert not getattr(sd_pipe.unet, "peft_config", None)  # coverage changes nothing


def test_coverage_full_sdxl(sdxl_pipe, files):
    for name in ("xl_diffusers", "xl_kohya"):
        cov = coverage(sdxl_pipe, read_lora(files[name]))
        assert cov.complete and cov.matched == 136, cov.message()
    assert read_lora(files["xl_kohya"]).summary()["alphas"] == [8.0]


def test_coverage_partial_predicts_what_diffusers_loads(sd_pipe, tmp_path):
    """An SDXL-made LoRA on to_q only: block 0 fits SD, block 1 and text_encoder_2 don't exist there."""
    path = testing.write_lora_file(tmp_path / "xl_q.safetensors", "sdxl", "diffusers", targets=("to_q",))
    lf = read_lora(path)
    cov = coverage(sd_pipe, lf)
    assert 0 < cov.landed_fraction < 1 and cov.loadable and not cov.shape_mismatches
    assert cov.per_component["unet"] == {"matched": 12, "unmatched": 12}
    assert cov.per_component["text_encoder_2"] == {"matched": 0, "unmatched": 20}
    reasons = {u.reason.split(":")[0] for u in cov.unmatched}
    assert reasons == {"no such module", "no such component"}
    assert "only 32 of 64" in cov.message() and "xl_q.safetensors" in cov.message()
    pipe = build_tiny_sd()
    load_lora_file(pipe, lf, "x")
    assert len(lora_layers(pipe.unet)) + len(lora_layers(pipe.text_encoder)) == cov.matched


def test_coverage_none(sd_pipe, tmp_path):
    path = testing.write_lora_file(
        tmp_path / "te2_only.safetensors", "sdxl", "diffusers", components=("text_encoder_2",)
    )
    cov = coverage(sd_pipe, read_lora(path))
    assert cov.matched == 0 and cov.landed_fraction == 0 and not cov.loadable
    with pytest.raises(LoraFileError, match=r"te2_only\.safetensors: none of its 20"):
        cov.require()


def test_coverage_wrong_base_shape_mismatch(sd_pipe, files):
    lf = read_lora(files["bad_wrong_base"])
    cov = coverage(sd_pipe, lf)
    assert cov.shape_mismatches and not cov.loadable
    assert any("lora expects (in,out)=(64,64), layer has (32,64)" in u.reason for u in cov.shape_mismatches)
    with pytest.raises(LoraFileError, match=r"sdxl_lora_for_sd\.safetensors.*another base model"):
        cov.require()
    with pytest.raises(RuntimeError, match="size mismatch"):  # what coverage predicts, diffusers does
        build_tiny_sd().load_lora_weights(formats.pipeline_state_dict(sd_pipe, lf)[0], adapter_name="x")


def test_coverage_wraps_conversion_errors(sd_pipe, tmp_path):
    path = _fake(
        tmp_path,
        "loha.safetensors",
        {
            "lora_unet_mid_block_attentions_0_proj_in.hada_w1_a": (4, 4),
            "lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": (1, 4),
        },
    )
    # a LoHa module lacking its other matrices: the loader names the algorithm and the keys
    with pytest.raises(LoraFileError, match=r"loha.safetensors: .*loha without hada_w1_b, hada_w2_a, "
                       r"hada_w2_b \(e\.g\. lora_unet_mid_block_attentions_0_proj_in\.hada_w1_a"):
        coverage(sd_pipe, read_lora(path))


# --- bad files ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, message",
    [
        ("truncated", "truncated"),
        (
            "unrelated",
            r"no LoRA keys \(lora_A/lora_B, lora_down/lora_up, \.\.\.\).*Example keys: 0\.bias, 0\.weight",
        ),
        ("unsafe_pt", "refused.*weights_only=True"),
        ("wrong_suffix", "unsupported file type '.txt'"),
        ("empty", "not a safetensors file"),
    ],
)
def test_bad_files_are_refused_with_the_file_name(files, kind, message):
    path = files[f"bad_{kind}"]
    with pytest.raises(LoraFileError, match=message) as info:
        read_lora(path)
    assert str(path) in str(info.value)


def test_truncated_header_and_missing_file(tmp_path):
    bad = tmp_path / "cut_header.safetensors"
    bad.write_bytes((10_000).to_bytes(8, "little") + b'{"a": ')
    with pytest.raises(LoraFileError, match=r"cut_header.safetensors: truncated or not a safetensors file"):
        read_lora(bad)
    with pytest.raises(LoraFileError, match=r"nothing_here\.safetensors: cannot open"):
        read_lora(tmp_path / "nothing_here.safetensors")


def test_nan_lora_is_flagged(files):
    lf = read_lora(files["bad_nan"])  # readable (inspect describes it); LoadLoRA refuses it (check_finite)
    assert len(lf.nonfinite_keys) == 1 and lf.summary()["nonfinite_keys"] == list(lf.nonfinite_keys)
    with pytest.raises(LoraFileError,
                       match=f"nan_lora.safetensors: tensor '{lf.nonfinite_keys[0]}' holds NaN"):
        lf.check_finite()
    read_lora(files["diffusers"]).check_finite()


def test_pickle_loads_only_through_weights_only(files, monkeypatch):
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    store.clear_lora_cache()
    lf = read_lora(files["bad_pt"])
    assert lf.format == "diffusers" and calls == [{"map_location": "cpu", "weights_only": True}]
    assert lf.addnet_hash is None and lf.short_hash == lf.sha256[:12]
    assert coverage(testing.tiny_pipeline("sd"), lf).complete


# --- kohya round trip ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_kohya_round_trip(files, tmp_path, kind):
    """Adapter -> kohya file -> diffusers: the same image, with true per-module alphas in the file."""
    build = build_tiny_sd if kind == "sd" else build_tiny_sdxl
    source = files["diffusers" if kind == "sd" else "xl_diffusers"]
    ref = build()
    load_lora_file(ref, read_lora(source), "orig")
    # Give one UNet and one text-encoder module an alpha of their own, as LyCORIS/LoCon files have.
    u_name, u = next(iter(lora_layers(ref.unet).items()))
    t_name, t = next(iter(lora_layers(ref.text_encoder).items()))
    for layer, alpha in ((u, 1.0), (t, 8.0)):
        layer.lora_alpha["orig"] = alpha
        layer.scaling["orig"] = alpha / layer.r["orig"]
    expected = render(ref) if kind == "sd" else None

    sds, alphas = kohya.adapter_for_save(ref, "orig")
    out = tmp_path / "saved.safetensors"
    kohya.save_kohya(sds, alphas, out, sdxl=kind == "sdxl")
    # The engine passes peft LoraConfigs instead of per-module alphas: same file unless alphas differ.
    configs = {c: getattr(ref, c).peft_config["orig"] for c in sds}
    assert kohya.peft_to_kohya(sds, configs, sdxl=kind == "sdxl").keys() == read_lora(out).state_dict.keys()

    lf = read_lora(out)
    assert lf.format == "kohya"
    te = "lora_te1_" if kind == "sdxl" else "lora_te_"
    sd = lf.state_dict
    assert float(sd["lora_unet_" + u_name.replace(".", "_") + ".alpha"]) == 1.0
    assert float(sd[te + "text_model_" + t_name.replace(".", "_") + ".alpha"]) == 8.0
    # ComfyUI's key maps (comfy/lora.py): lora_unet_<diffusers path with _>, and the CLIP names.
    clip = re.compile(
        rf"^({te}|lora_te2_)text_model_encoder_layers_\d+_(self_attn_[qkv]_proj|self_attn_out_proj)$"
    )
    unet_modules = {"lora_unet_" + n.replace(".", "_") for n, _ in ref.unet.named_modules()}
    for module in {k.split(".")[0] for k in sd}:
        if module.startswith("lora_unet_"):
            assert module in unet_modules
        else:
            assert clip.match(module), module
    assert coverage(ref, lf).complete

    fresh = build()
    fresh.load_lora_weights(formats.pipeline_state_dict(fresh, lf)[0], adapter_name="orig")
    assert_same_deltas(deltas(ref, "orig"), deltas(fresh, "orig"))
    if expected is not None:  # and, once, the image itself
        assert (render(fresh) - expected).abs().max() < 1e-5


def test_kohya_refuses_what_it_cannot_express():
    with pytest.raises(ValueError, match="diffusers form"):
        kohya.peft_to_kohya({"transformer": {"a.lora_A.weight": torch.zeros(1, 1)}}, {})
    with pytest.raises(ValueError, match="no kohya equivalent"):
        kohya.peft_to_kohya({"unet": {"a.lora_magnitude_vector": torch.zeros(1)}}, {})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_the_one_pass_finiteness_check_agrees_with_isfinite(dtype):
    from loragraph.loaders.lora_file import all_finite as _all_finite

    big = torch.finfo(dtype).max
    cases = [
        torch.randn(257, dtype=dtype),
        torch.full((1000,), big, dtype=dtype),  # finite, and their sum overflows any 16/32-bit float
        torch.tensor([big, -big, big], dtype=dtype),
        torch.tensor([1.0, float("nan"), 2.0], dtype=dtype),
        torch.tensor([1.0, float("inf")], dtype=dtype),
        torch.tensor([float("-inf"), 3.0], dtype=dtype),
        torch.tensor([float("inf"), float("-inf")], dtype=dtype),  # inf - inf: NaN
        torch.zeros(0, dtype=dtype),
    ]
    for t in cases:
        assert _all_finite(t) == bool(torch.isfinite(t).all()), t


@pytest.mark.parametrize(("names", "expected"), [
    # Flux's kohya names (LyCORIS or kohya run on diffusers' Flux): blocks at the top level
    (("lora_unet_single_transformer_blocks_1_attn_to_k", "lora_unet_transformer_blocks_2_attn_to_q"), None),
    (("lora_unet_down_blocks_1_attentions_0_transformer_blocks_1_attn1_to_q",), "SDXL"),  # diffusers names
    (("lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q",), "SDXL"),  # SGM names
])
def test_the_base_model_guess_tells_flux_blocks_from_sdxls(tmp_path, names, expected):
    from loragraph.loaders.summary import guess_base_model

    sd = {}
    for name in names:
        sd[f"{name}.lora_down.weight"] = torch.full((4, 64), 0.01)
        sd[f"{name}.lora_up.weight"] = torch.full((64, 4), 0.01)
        sd[f"{name}.alpha"] = torch.tensor(4.0)
    path = tmp_path / "guess.safetensors"
    safetensors.torch.save_file(sd, str(path))
    base, why = guess_base_model(read_lora(path))
    if expected is None:
        assert base != "SDXL", why
    else:
        assert base == expected, why
