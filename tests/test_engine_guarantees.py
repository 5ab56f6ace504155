"""The reconciler's guarantees: branches are independent, unfuse is bit-exact, failures roll back
completely, and the work done is minimal."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import PROMPT, SIZE, max_diff
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from loragraph import host
from loragraph.base.errors import NodeInputError
from loragraph.builtin_models.tiny_sd import build_tiny_sd
from loragraph.loaders import state as st
from loragraph.loaders import transitions as tr
from loragraph.loaders.engine import Engine
from loragraph.loaders.reconcile import LoraOperationError
from loragraph.nodes import widget_text as wt

pytestmark = pytest.mark.lowend  # in .ci/run's run on the lowest diffusers/peft too

STEPS = 2  # the branch property needs many images; two steps still carry every LoRA into them
# d and e have the same UNet layers and rank: switching between them hot-swaps (hotswap.swap).
FILES = {"a": "sd_a.safetensors", "b": "sd_b.safetensors", "c": "sd_c.safetensors", "d": "sd_u1.safetensors",
         "e": "sd_u2.safetensors"}


@pytest.fixture(scope="module")
def shared(models_dir):
    """One engine and base handle for the module: the property tests share a live pipeline, as a server
    does."""
    from loragraph import host

    host.configure(models_dir=models_dir, output_dir=models_dir / "out")
    engine = Engine()
    return engine, engine.load_pipeline("builtin:tiny-sd")


def sample(engine, handle):
    return engine.sample(handle, PROMPT, "", 3, STEPS, 7.0, SIZE, SIZE)


def apply(engine, handle, op):
    """Apply one drawn operation; operations that are invalid for this state are skipped."""
    kind, arg = op
    try:
        if kind == "load":
            if arg in handle.state.names:
                return handle
            return tr.add_adapter(handle, engine.lora_spec(handle, FILES[arg], 0.8, arg))
        if kind == "weights":
            names, w = arg
            names = [n for n in names if n in handle.state.names]
            if not names:
                return handle
            return wt.set_weights(handle, ",".join(names), str(w), "0.5" if w > 0.5 else "", "")
        if kind == "fuse":
            unet, te, scale = arg
            return wt.fuse(handle, unet, te, scale, False, "")
        if kind == "unfuse":
            return tr.unfuse(handle, *arg)
        if kind == "toggle":
            return tr.toggle_text_encoder(handle, arg, "all")
        if kind == "delete":
            if arg not in handle.state.names:
                return handle
            return wt.delete(handle, arg)
        if kind == "unload":
            return tr.unload(handle)
    except NodeInputError:
        return handle
    raise AssertionError(kind)


names_st = hs.lists(hs.sampled_from(list(FILES)), min_size=1, max_size=3, unique=True)
op_st = hs.one_of(
    hs.tuples(hs.just("load"), hs.sampled_from(list(FILES))),
    hs.tuples(hs.just("weights"), hs.tuples(names_st, hs.sampled_from([0.0, 0.3, 1.0, -0.5]))),
    hs.tuples(hs.just("fuse"), hs.tuples(hs.booleans(), hs.booleans(), hs.sampled_from([1.0, 0.5]))),
    hs.tuples(hs.just("unfuse"), hs.tuples(hs.booleans(), hs.booleans())),
    hs.tuples(hs.just("toggle"), hs.booleans()),
    hs.tuples(hs.just("delete"), hs.sampled_from(list(FILES))),
    hs.tuples(hs.just("unload"), hs.none()),
)
# Sequences start with a load so most examples carry LoRAs; fusion needs loaded adapters.
seq_st = hs.lists(op_st, min_size=1, max_size=5).map(lambda ops: [("load", "a"), *ops])


def build(engine, base, ops):
    h = base
    for op in ops:
        h = apply(engine, h, op)
    return h


# 8 random pairs: enough to catch ordering bugs (the shrinker then minimises); each costs ~1.5 s.
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops1=seq_st, ops2=seq_st)
def test_branches_are_independent(shared, ops1, ops2):
    """realize(h1), realize(h2), realize(h1) gives h1's image again, fused states included."""
    engine, base = shared
    h1, h2 = build(engine, base, ops1), build(engine, base, ops2)
    first = sample(engine, h1)
    sample(engine, h2)
    again = sample(engine, h1)
    assert max_diff(first, again) <= 1 / 255


def _base_weights(pipe) -> dict[str, torch.Tensor]:
    """The base weights as the model sees them, LoRA wrappers looked through."""
    out = {}
    for comp in ("unet", "text_encoder"):
        for k, v in getattr(pipe, comp).state_dict().items():
            if "lora_" in k:
                continue
            out[f"{comp}.{k.replace('.base_layer', '')}"] = v.clone()
    return out


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops=seq_st)
def test_fuse_then_unfuse_is_bit_exact(models_dir, dtype, ops):
    """After any sequence, unfusing everything restores every base weight bit for bit."""
    from loragraph import host

    host.configure(models_dir=models_dir, output_dir=models_dir / "out")
    engine = Engine()
    base = engine.load_pipeline("builtin:tiny-sd", dtype=dtype, device="cpu")
    live = engine.live(base.source)
    pristine = _base_weights(live.pipe)
    h = build(engine, base, ops)
    h = apply(engine, h, ("fuse", (True, True, 0.7)))
    engine.realize(h)
    h = apply(engine, apply(engine, h, ("weights", (list(FILES), 0.3))), ("fuse", (True, True, 1.0)))
    engine.realize(h)
    engine.realize(tr.unfuse(h, True, True))
    now = _base_weights(live.pipe)
    assert pristine.keys() == now.keys()
    assert all(torch.equal(pristine[k], now[k]) for k in pristine)


def test_diffusers_own_unfuse_drifts_but_ours_does_not(shared):
    """The reason for the backups: diffusers' unfuse subtracts, and in fp16 that is not exact."""
    pipe = build_tiny_sd().to(torch.float16)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    from loragraph.testing import make_lora_state_dict

    sd = make_lora_state_dict(build_tiny_sd(), components=("unet",), seed=5)
    pipe.load_lora_weights({f"unet.{k}": v.half() for k, v in sd["unet"].items()}, adapter_name="x")
    pipe.fuse_lora(components=["unet"], lora_scale=0.7)
    pipe.unfuse_lora(components=["unet"])
    after = {k.replace(".base_layer", ""): v for k, v in pipe.unet.state_dict().items() if "lora_" not in k}
    assert any(not torch.equal(before[k], after[k]) for k in before)  # why we keep backups


# --- failures roll back -------------------------------------------------------------------------


def snapshot(engine, handle):
    live = engine.live(handle.source)
    pipe = live.pipe
    weights = {}
    for comp in ("unet", "text_encoder"):
        for k, v in getattr(pipe, comp).state_dict().items():
            weights[f"{comp}.{k}"] = v.clone()
    lists = pipe.get_list_adapters() if any(
        getattr(getattr(pipe, c), "peft_config", None) for c in ("unet", "text_encoder")
    ) else {}
    return weights, lists, live.state


def assert_same(before, after):
    wb, lb, sb = before
    wa, la, sa = after
    assert lb == la
    assert sb == sa
    assert wb.keys() == wa.keys()
    for k in wb:
        assert torch.equal(wb[k], wa[k]), k


@pytest.fixture()
def loaded(configured):
    engine = Engine()
    base = engine.load_pipeline("builtin:tiny-sd")
    h = tr.add_adapter(base, engine.lora_spec(base, "sd_a.safetensors", 0.9, "a"))
    h = wt.fuse(h, True, True, 0.8, False, "")
    engine.realize(h)
    return engine, h


@pytest.mark.parametrize("bad", ["bad/truncated.safetensors", "bad/unrelated_model.safetensors",
                                 "bad/empty.safetensors"])
def test_unreadable_files_fail_on_the_input(loaded, bad):
    engine, h = loaded
    before = snapshot(engine, h)
    with pytest.raises(NodeInputError) as err:
        engine.lora_spec(h, bad, 1.0, "")
    assert err.value.input_name == "lora_name"
    assert bad.split("/")[-1] in str(err.value)
    assert_same(before, snapshot(engine, h))


def test_lora_for_another_base_model_rolls_back(loaded):
    engine, h = loaded
    before = snapshot(engine, h)
    spec = engine.lora_spec(h, "bad/sdxl_lora_for_sd.safetensors", 1.0, "xl")
    with pytest.raises(LoraOperationError) as err:
        engine.realize(tr.add_adapter(h, spec))
    assert err.value.input_name == "lora_name"
    assert "another base model" in str(err.value) and "wrong shape" in str(err.value)
    assert_same(before, snapshot(engine, h))


def test_a_nan_lora_is_refused_at_load_naming_lora_name_and_the_tensor(loaded):
    engine, h = loaded
    before = snapshot(engine, h)
    with pytest.raises(NodeInputError) as err:
        engine.lora_spec(h, "bad/nan_lora.safetensors", 1.0, "nan")
    assert err.value.input_name == "lora_name"
    assert "nan_lora.safetensors" in str(err.value) and "lora_B" in str(err.value) and "NaN" in str(err.value)
    assert_same(before, snapshot(engine, h))


def test_nan_under_safe_fusing_rolls_back(loaded):
    """LoadLoRA refuses a NaN file (above); safe_fusing still guards a spec made without that check."""
    from loragraph.loaders import store as lora_file

    engine, h = loaded
    before = snapshot(engine, h)
    path = host.resolve_in("loras", "bad/nan_lora.safetensors")
    spec = st.AdapterSpec("nan", str(path), lora_file.read_lora(path).sha256, 1.0, None, "")
    h2 = tr.add_adapter(h, spec)
    h2 = wt.fuse(h2, True, True, 1.0, True, "nan", origin="FuseLoRA #7")
    with pytest.raises(LoraOperationError) as err:
        engine.realize(h2)
    assert err.value.input_name == "safe_fusing"
    assert "FuseLoRA #7" in str(err.value)
    assert_same(before, snapshot(engine, h))


@pytest.mark.parametrize("where", ["merge", "text_encoder_load", "set_adapters"])
def test_exception_in_the_middle_rolls_back(loaded, monkeypatch, where):
    """An exception injected part-way through an operation leaves the pipeline exactly as it was."""
    engine, h = loaded
    before = snapshot(engine, h)
    calls = {"n": 0}

    class Injected(RuntimeError):
        pass

    if where == "merge":
        from loragraph.loaders import fence

        original = fence.merges_by_gemm

        def plain_linear(*a, **k):
            calls["n"] += 1
            if calls["n"] == 5:  # after four layers were fused
                raise Injected("boom")
            return original(*a, **k)

        monkeypatch.setattr(fence, "merges_by_gemm", plain_linear)
        target = wt.fuse(wt.set_weights(h, "", "0.4"), True, True, 1.0, False, "")
        target = wt.fuse(tr.unfuse(target, True, True), True, True, 1.0, False, "")
    elif where == "text_encoder_load":
        import diffusers.loaders.lora_pipeline as lp

        original = lp.StableDiffusionLoraLoaderMixin.load_lora_into_text_encoder.__func__

        def fail_once(cls, *a, **k):
            calls["n"] += 1
            if calls["n"] == 1:
                raise Injected("boom")
            return original(cls, *a, **k)

        # the unet part of the load has happened when the text-encoder part fails
        monkeypatch.setattr(lp.StableDiffusionLoraLoaderMixin, "load_lora_into_text_encoder",
                            classmethod(fail_once))
        target = tr.add_adapter(h, engine.lora_spec(h, "sd_b.safetensors", 1.0, "b"))
    else:
        # activation is peft's set_adapter + set_scale on each tuner layer (diffusers' set_adapters
        # does the same per layer): fail after some layers were switched to the new set
        from peft.tuners.lora.layer import LoraLayer

        original = LoraLayer.set_scale

        def set_scale(self, *a, **k):
            calls["n"] += 1
            if calls["n"] == 5:
                raise Injected("boom")
            return original(self, *a, **k)

        monkeypatch.setattr(LoraLayer, "set_scale", set_scale)
        target = tr.add_adapter(h, engine.lora_spec(h, "sd_b.safetensors", 1.0, "b"))
    with pytest.raises((Injected, LoraOperationError)) as err:
        engine.realize(target)
    assert isinstance(err.value, Injected) or isinstance(err.value.__cause__, Injected)
    monkeypatch.undo()
    assert_same(before, snapshot(engine, h))
    # and the pipeline still works for the state it was in
    engine.realize(tr.unload(h))


# --- minimal work ---------------------------------------------------------------------------------


def test_minimal_operations(configured, caplog):
    engine = Engine()
    base = engine.load_pipeline("builtin:tiny-sd")
    live = engine.live(base.source)
    h = tr.add_adapter(base, engine.lora_spec(base, "sd_a.safetensors", 1.0, "a"))
    h = tr.add_adapter(h, engine.lora_spec(h, "sd_b.safetensors", 1.0, "b"))
    engine.realize(h)

    def ops_for(target):
        n = len(live.ops)
        engine.realize(target)
        return live.ops[n:]

    assert ops_for(h) == []  # already there: nothing at all
    assert ops_for(wt.set_weights(h, "a,b", "0.3,0.9")) == ["set_adapters"]  # no reload, no fuse
    assert ops_for(wt.set_weights(h, "a", "0.5")) == ["set_adapters"]
    fused = wt.fuse(wt.set_weights(h, "a", "0.5"), True, True, 1.0, False, "")
    assert ops_for(fused) == ["fuse_lora", "fuse_lora"]
    assert ops_for(tr.unfuse(fused, True, False)) == ["unfuse_lora(exact)"]
    engine.realize(h)
    with caplog.at_level(logging.DEBUG, logger="loragraph"):
        assert ops_for(wt.delete(h, "b")) == ["set_adapters"]  # b is parked, not deleted
        assert ops_for(h) == ["set_adapters"]  # and coming back is one call, no load
    timed = [r.getMessage() for r in caplog.records if "took" in r.getMessage()]
    assert any(m.startswith("set_adapters") and m.endswith(" ms") for m in timed), timed
    # a different file under a parked name is really deleted and loaded
    other = tr.add_adapter(wt.delete(h, "b"), engine.lora_spec(h, "sd_c.safetensors", 1.0, "b"))
    assert ops_for(other)[:2] == ["delete_adapters", "load_lora_weights"]
    # the same file is read once, whatever the number of loads
    from loragraph.loaders import store

    reads = store.lora_cache_stats()["parses"]
    engine.realize(tr.unload(h))
    engine.realize(h)
    assert store.lora_cache_stats()["parses"] == reads
