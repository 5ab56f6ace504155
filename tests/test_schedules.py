"""LoRA schedules (docs/CONTRACT.md: ScheduleAdapterWeights) against diffusers' own recipe.

The oracle is what diffusers documents for a per-step LoRA strength: `set_adapters` before the call
for step 0, then `callback_on_step_end` -> `set_adapters` (the callback runs at the END of step i,
so it sets step i+1's weights). The per-step weights the recipe uses are written out by hand in each
test from the contract's rule "step i of N runs at strength(i / N)", not computed by the code under
test. Tolerance: 2/255 (a pixel may differ by at most 2 on 0..255); fp32 on the CPU, the images are
in fact bit-equal.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import PROMPT, SIZE, STEPS, max_diff, raw_load, raw_pipeline
from loragraph.base.errors import NodeInputError
from loragraph.graph import ExecutionInterrupted
from loragraph.loaders import transitions as tr
from loragraph.loaders.engine import Engine
from loragraph.loaders.reconcile import LoraOperationError
from loragraph.loaders.state import Schedule
from loragraph.nodes import widget_text as wt
from loragraph.testing import build_tiny_sd3, write_lora_file
from test_transformer_pipelines import sd3_models  # noqa: F401 - the tiny SD3 folder and its LoRAs (a fixture)

TOL = 2 / 255
N = 4  # four steps: a switch at step 1, 2 or 3 is visible and still cheap


@pytest.fixture()
def engine(configured):
    return Engine()


@pytest.fixture(scope="module")
def disjoint(models_dir):
    """Two UNet-only LoRAs on disjoint layers (to_q/to_k and to_v/to_out.0): one can stay fused while
    the other is scheduled unfused."""
    loras = models_dir / "loras"
    write_lora_file(loras / "sched_qk.safetensors", "sd", "diffusers", rank=4, seed=31, components=("unet",),
                    targets=("to_q", "to_k"))
    write_lora_file(loras / "sched_vo.safetensors", "sd", "diffusers", rank=4, seed=32, components=("unet",),
                    targets=("to_v", "to_out.0"))
    return models_dir


def sample(engine, handle, steps=N, seed=1, **kw):
    return engine.sample(handle, PROMPT, "", seed, steps, 7.0, SIZE, SIZE, **kw)


def load(engine, handle, name, strength=1.0, adapter=""):
    return tr.add_adapter(handle, engine.lora_spec(handle, name, strength, adapter))


def recipe(pipe, names, per_step, steps=N, seed=1, size=SIZE, cfg=7.0):
    """diffusers' documented recipe. `per_step[i]` = the set_adapters weights of step i (a list per name)."""
    assert len(per_step) == steps
    pipe.set_adapters(names, per_step[0])

    def on_step_end(p, i, _t, _kwargs):
        if i + 1 < steps:
            p.set_adapters(names, per_step[i + 1])
        return {}

    out = pipe(PROMPT, negative_prompt="", num_inference_steps=steps, guidance_scale=cfg, width=size,
               height=size, num_images_per_prompt=1, generator=torch.Generator("cpu").manual_seed(seed),
               output_type="np", callback_on_step_end=on_step_end)
    assert len(pipe.scheduler.timesteps) == steps  # the tiny pipelines' scheduler: one loop per step
    return torch.from_numpy(out.images).float()


def unet_te(unet, te=1.0):
    return {"unet": unet, "text_encoder": te}


# --- the curve and the keyframe string ------------------------------------------------------------


def test_strength_curve_by_hand():
    ks = ((0.2, 1.0), (0.6, -1.0), (1.0, 3.0))
    lin, hold, ease = (Schedule("a", ks, k) for k in ("linear", "hold", "ease"))
    assert [lin.strength(p) for p in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)] == pytest.approx([1, 1, 0, -1, 1, 3])
    # hold: a keyframe's strength starts at its own progress and lasts until the next one
    assert [hold.strength(p) for p in (0.0, 0.2, 0.59, 0.6, 0.99, 1.0)] == [1, 1, 1, -1, -1, 3]
    # ease = smoothstep: t=0.25 -> 0.15625, t=0.5 -> 0.5
    assert ease.strength(0.3) == pytest.approx(1.0 - 2.0 * 0.15625)
    assert ease.strength(0.4) == pytest.approx(0.0)
    one = Schedule("a", ((0.5, 2.0),), "linear")
    assert one.strength(0.0) == one.strength(1.0) == 2.0


def test_parse_keyframes():
    assert wt.parse_keyframes(" 0:1.0, 0.4:1 ,0.6:-0.5") == ((0.0, 1.0), (0.4, 1.0), (0.6, -0.5))
    assert wt.parse_keyframes("1:2") == ((1.0, 2.0),)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "at least one"),
        ("0:1, 0.4", "keyframe 2 ('0.4'): expected progress:strength"),
        ("0:1, 0.5:x", "keyframe 2 ('0.5:x'): strength 'x' is not a number"),
        ("a:1", "keyframe 1 ('a:1'): progress 'a' is not a number"),
        ("0:1, 1.5:0", "keyframe 2 ('1.5:0'): progress must be between 0 and 1"),
        ("0:1, -0.1:0", "keyframe 2"),
        ("0.5:1, 0.5:0", "keyframe 2 ('0.5:0'): progress must increase strictly, but 0.5 follows 0.5"),
        ("0.6:1, 0.4:0", "0.4 follows 0.6"),
        ("0:nan", "keyframe 1 ('0:nan'): strength must be a finite number"),
        ("0:inf", "finite"),
        ("0:1,,1:0", "keyframe 2 is empty"),
        ("0:1:2", "expected progress:strength"),
    ],
)
def test_bad_keyframes_name_the_input_and_the_keyframe(text, needle):
    with pytest.raises(NodeInputError) as err:
        wt.parse_keyframes(text)
    assert err.value.input_name == "keyframes"
    assert needle in str(err.value)


# --- the transition -----------------------------------------------------------------------------


def test_transition_rules(engine):
    h0 = engine.load_pipeline("builtin:tiny-sd")
    with pytest.raises(NodeInputError, match="pipeline: no LoRA"):
        wt.schedule_weights(h0, "a", "0:1")
    h = load(engine, load(engine, h0, "sd_a.safetensors", adapter="a"), "sd_b.safetensors", adapter="b")
    for bad, name in (("zz", "adapter_name"), ("", "adapter_name")):
        with pytest.raises(NodeInputError) as err:
            wt.schedule_weights(h, bad, "0:1")
        assert err.value.input_name == name
    with pytest.raises(NodeInputError) as err:
        wt.schedule_weights(h, "a", "0:1", "cubic")
    assert err.value.input_name == "interpolation"
    with pytest.raises(NodeInputError, match="not active"):
        wt.schedule_weights(wt.set_weights(h, "b", "1"), "a", "0:1")

    s1 = wt.schedule_weights(h, "b", "0:1, 1:0", "hold")
    s2 = wt.schedule_weights(s1, "a", "0:0")
    assert [s.adapter for s in s2.state.schedules] == ["a", "b"]
    assert h.state.schedules == () and len(s1.state.schedules) == 1  # values: the inputs never change
    # a later schedule on the same adapter replaces it
    s3 = wt.schedule_weights(s2, "b", "0:2", "ease")
    assert s3.state.schedule("b") == Schedule("b", ((0.0, 2.0),), "ease")
    # SetAdapterWeights naming an adapter removes its schedule; the others' stay (inactive ones do nothing)
    assert [s.adapter for s in wt.set_weights(s2, "a", "0.5").state.schedules] == ["b"]
    assert wt.set_weights(s2, "", "0.5").state.schedules == ()
    # deleting or unloading the adapter takes its schedule along
    assert [s.adapter for s in wt.delete(s2, "a").state.schedules] == ["b"]
    assert tr.unload(s2).state.schedules == ()
    # the handle's identity includes the schedule (cache keys, branches)
    assert wt.schedule_weights(h, "b", "0:1, 1:0") != wt.schedule_weights(h, "b", "0:1, 1:0.5")
    assert wt.schedule_weights(h, "b", "0:1, 1:0") == wt.schedule_weights(h, "b", "0:1,1:0")


# --- the oracle: diffusers' recipe ----------------------------------------------------------------


def test_constant_schedule_equals_a_plain_weight(engine, configured):
    h = load(engine, engine.load_pipeline("builtin:tiny-sd"), "sd_a.safetensors", 0.7, "a")
    plain = sample(engine, h)
    assert max_diff(sample(engine, wt.schedule_weights(h, "a", "0:0.7")), plain) <= TOL
    assert max_diff(sample(engine, wt.schedule_weights(h, "a", "0:0.7, 0.5:0.7, 1:0.7", "ease")),
                    plain) <= TOL
    raw = raw_pipeline()
    raw_load(raw, configured, "sd_a.safetensors", "a")
    assert max_diff(plain, recipe(raw, ["a"], [[0.7]] * N)) <= TOL


def test_switch_on_at_step_k_matches_the_recipe(engine, configured):
    h = load(engine, engine.load_pipeline("builtin:tiny-sd"), "sd_a.safetensors", 1.0, "a")
    raw = raw_pipeline()
    raw_load(raw, configured, "sd_a.safetensors", "a")
    for k in (1, 2, 3):
        ours = sample(engine, wt.schedule_weights(h, "a", f"0:0, {k / N}:1", "hold"))
        # the text encoder keeps its weight (1.0): the schedule is the denoiser's only
        per_step = [[unet_te(0.0 if i < k else 1.0)] for i in range(N)]
        assert max_diff(ours, recipe(raw, ["a"], per_step)) <= TOL, k
        # a recipe one step off (the callback's timing mistaken) gives another image: the test can tell
        off = [[unet_te(0.0 if i < k - 1 else 1.0)] for i in range(N)]
        assert max_diff(ours, recipe(raw, ["a"], off)) > TOL, k


def test_two_scheduled_and_one_static_adapter_sd(engine, configured):
    h0 = engine.load_pipeline("builtin:tiny-sd")
    h = load(engine, load(engine, load(engine, h0, "sd_a.safetensors", 1.0, "a"),
                          "sd_b.safetensors", 1.0, "b"),
             "sd_c.safetensors", 1.0, "c")
    h = wt.set_weights(h, "a, b, c", "0.8, 0.6, 0.5", "0.3")
    h = wt.schedule_weights(h, "a", "0:1, 1:-0.5", "linear")  # negative strengths allowed
    h = wt.schedule_weights(h, "b", "0.25:0, 0.75:1", "ease")
    ours = sample(engine, h)
    raw = raw_pipeline()
    for name, adapter in (("sd_a.safetensors", "a"), ("sd_b.safetensors", "b"), ("sd_c.safetensors", "c")):
        raw_load(raw, configured, name, adapter)
    a = [1.0, 0.625, 0.25, -0.125]  # linear from 1 at 0 to -0.5 at 1, at 0, 1/4, 2/4, 3/4
    b = [0.0, 0.0, 0.5, 1.0]  # smoothstep from 0.25 to 0.75: t = 0, 0.5, 1 at steps 1..3
    per_step = [[unet_te(a[i], 0.3), unet_te(b[i], 0.3), 0.5] for i in range(N)]
    # sd_c is UNet-only (a bare PEFT file): its weight is a plain number, as SetAdapterWeights gives it
    assert max_diff(ours, recipe(raw, ["a", "b", "c"], per_step)) <= TOL
    # and the static weights are back afterwards
    static = wt.set_weights(h, "a, b, c", "0.8, 0.6, 0.5", "0.3")
    raw.set_adapters(["a", "b", "c"], [unet_te(0.8, 0.3), unet_te(0.6, 0.3), 0.5])
    assert max_diff(sample(engine, static),
                    recipe(raw, ["a", "b", "c"], [[unet_te(0.8, 0.3), unet_te(0.6, 0.3), 0.5]] * N)) <= TOL


def test_sdxl_schedule_matches_the_recipe(engine, configured):
    h = load(engine, engine.load_pipeline("builtin:tiny-sdxl"), "xl_a.safetensors", 1.0, "x")
    ours = sample(engine, wt.schedule_weights(h, "x", "0:1, 0.4:1, 0.6:0", "linear"))
    raw = raw_pipeline("sdxl")
    raw_load(raw, configured, "xl_a.safetensors", "x")
    te = {"text_encoder": 1.0, "text_encoder_2": 1.0}
    per_step = [[{"unet": w, **te}] for w in (1.0, 1.0, 0.0, 0.0)]  # 0.5 is mid-ramp: 0.5; 0.75 past it: 0
    per_step[2] = [{"unet": 0.5, **te}]
    assert max_diff(ours, recipe(raw, ["x"], per_step)) <= TOL


EDGES = [
    ("0:0.3, 0.5:1", 1, [0.3]),  # one step: strength(0) only
    ("0:0, 1:1", N, [0.0, 0.25, 0.5, 0.75]),  # the keyframe at 1.0 is never reached (step N-1 = 3/4)
    ("1:-1", N, [-1.0] * N),  # before the first keyframe, the first holds
    ("0:-1, 0.5:0.5", N, [-1.0, -0.25, 0.5, 0.5]),  # negative strengths
]


def test_edges(engine, configured):
    h = load(engine, engine.load_pipeline("builtin:tiny-sd"), "sd_a.safetensors", 1.0, "a")
    raw = raw_pipeline()
    raw_load(raw, configured, "sd_a.safetensors", "a")
    for keyframes, steps, weights in EDGES:
        ours = sample(engine, wt.schedule_weights(h, "a", keyframes), steps=steps)
        expected = recipe(raw, ["a"], [[unet_te(w)] for w in weights], steps=steps)
        assert max_diff(ours, expected) <= TOL, keyframes


def test_block_weights_scale_with_the_schedule(engine, configured):
    h = load(engine, engine.load_pipeline("builtin:tiny-sd"), "sd_a.safetensors", 1.0, "a")
    h = wt.set_weights(h, "a", "1", "0.5", '{"down": 0.5, "mid": 1.0, "up": 0.25}')
    ours = sample(engine, wt.schedule_weights(h, "a", "0:1, 1:-1"))
    raw = raw_pipeline()
    raw_load(raw, configured, "sd_a.safetensors", "a")
    per_step = [[{"unet": {"down": 0.5 * s, "mid": s, "up": 0.25 * s}, "text_encoder": 0.5}]
                for s in (1.0, 0.5, 0.0, -0.5)]
    assert max_diff(ours, recipe(raw, ["a"], per_step)) <= TOL


def test_transformer_denoiser_sd3(sd3_models, tmp_path):  # noqa: F811 - the imported fixture
    """A transformer denoiser (tiny SD3, flow matching): the schedule acts on `transformer`."""
    from loragraph import host
    from test_transformer_pipelines import MODEL as SD3
    from test_transformer_pipelines import SIZE as SD3_SIZE

    host.configure(models_dir=sd3_models, output_dir=tmp_path / "output")
    engine = Engine()
    h = load(engine, engine.load_pipeline(SD3), "sd3_a.safetensors", 1.0, "a")
    ours = engine.sample(wt.schedule_weights(h, "a", "0:1, 1:-1"), PROMPT, "", 1, N, 5.0, SD3_SIZE, SD3_SIZE)
    raw = build_tiny_sd3()
    raw_load(raw, sd3_models, "sd3_a.safetensors", "a")
    te = {"text_encoder": 1.0, "text_encoder_2": 1.0}
    per_step = [[{"transformer": w, **te}] for w in (1.0, 0.5, 0.0, -0.5)]
    assert max_diff(ours, recipe(raw, ["a"], per_step, size=SD3_SIZE, cfg=5.0)) <= TOL


# --- handles, branches, restore -----------------------------------------------------------------


def _scales(engine, handle, name):
    live = engine.live(handle.source)
    return [m.scaling[name] for _, m in live.pipe.unet.named_modules()
            if name in (getattr(m, "scaling", None) or {})]


def test_branches_never_see_each_others_schedule(engine, configured):
    h = load(engine, engine.load_pipeline("builtin:tiny-sd"), "sd_a.safetensors", 1.0, "a")
    up = wt.schedule_weights(h, "a", "0:0, 1:1")
    down = wt.schedule_weights(h, "a", "0:1, 1:0")
    first_up, first_down, plain = sample(engine, up), sample(engine, down), sample(engine, h)
    assert max_diff(first_up, first_down) > 4 / 255
    assert max_diff(sample(engine, up), first_up) == 0
    assert max_diff(sample(engine, h), plain) == 0
    assert max_diff(sample(engine, down), first_down) == 0
    # LoRAInfo shows the handle's own schedule
    assert engine.info(up)["schedules"] == {"a": {"keyframes": "0:0, 1:1", "interpolation": "linear",
                                                  "active": True}}
    assert engine.info(h)["schedules"] == {}
    # the PNG's credits say the weight followed a schedule (and only where one did)
    from loragraph.nodes import lora_credits

    (scheduled,) = json.loads(
        lora_credits.png_chunks(lora_credits.credits_for(up, PROMPT, "", 1, N, 7, SIZE, SIZE))["loras"])
    assert scheduled["schedule"] == {"keyframes": "0:0, 1:1", "interpolation": "linear"}
    (plain_credit,) = json.loads(
        lora_credits.png_chunks(lora_credits.credits_for(h, PROMPT, "", 1, N, 7, SIZE, SIZE))["loras"])
    assert "schedule" not in plain_credit


def test_static_scales_come_back_after_an_interrupt_or_an_error(engine, configured):
    h = load(engine, engine.load_pipeline("builtin:tiny-sd"), "sd_a.safetensors", 0.7, "a")
    plain = sample(engine, h)
    before = _scales(engine, h, "a")
    sched = wt.schedule_weights(h, "a", "0:0, 0.5:2")

    def interrupt_at_step_2():
        if calls.append(1) or len(calls) == 2:
            raise ExecutionInterrupted()

    calls: list[int] = []
    with pytest.raises(ExecutionInterrupted):
        sample(engine, sched, check_interrupted=interrupt_at_step_2)
    assert _scales(engine, h, "a") == before  # bit for bit

    def fail(i, n):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        sample(engine, sched, progress=fail)
    assert _scales(engine, h, "a") == before
    assert max_diff(sample(engine, h), plain) == 0


# --- fusion -------------------------------------------------------------------------------------


def _merged(engine, handle, name):
    live = engine.live(handle.source)
    return {name in m.merged_adapters for _, m in live.pipe.unet.named_modules()
            if name in (getattr(m, "scaling", None) or {})}


@pytest.mark.parametrize("order", ["fuse_then_schedule", "schedule_then_fuse"])
def test_scheduled_adapter_samples_unfused_while_the_others_stay_fused(engine, disjoint, order):
    h = engine.load_pipeline("builtin:tiny-sd")
    h = load(engine, load(engine, h, "sched_qk.safetensors", 0.8, "f"), "sched_vo.safetensors", 1.0, "s")
    if order == "fuse_then_schedule":  # both fused: the scheduled one comes out of the fusion to sample
        fused = wt.fuse(h, True, False, 1.0, False, "")
        sched = wt.schedule_weights(fused, "s", "0:0, 0.5:1", "hold")
    else:
        sched = wt.fuse(wt.schedule_weights(h, "s", "0:0, 0.5:1", "hold"), True, False, 1.0, False, "")
        fused = wt.fuse(h, True, False, 1.0, False, "")
    engine.check_schedules(sched)
    fused_image = sample(engine, fused)
    ours = sample(engine, sched)
    assert _merged(engine, sched, "f") == {True} and _merged(engine, sched, "s") == {False}
    from loragraph.nodes.lora_credits import lora_credits

    assert {c.adapter: (c.fused, c.schedule is not None) for c in lora_credits(sched)} == {
        "f": (True, False), "s": (False, True)}
    raw = raw_pipeline()
    raw_load(raw, disjoint, "sched_qk.safetensors", "f")
    raw_load(raw, disjoint, "sched_vo.safetensors", "s")
    raw.set_adapters(["f", "s"], [0.8, 1.0])
    raw.fuse_lora(components=["unet"], adapter_names=["f"])
    assert max_diff(ours, recipe(raw, ["f", "s"], [[0.8, w] for w in (0.0, 0.0, 1.0, 1.0)])) <= TOL
    # the fused handle comes back exactly (the reconciler restores and fuses again)
    assert max_diff(sample(engine, fused), fused_image) == 0


def test_schedule_on_layers_another_adapter_is_fused_into_is_refused(engine, configured):
    h = engine.load_pipeline("builtin:tiny-sd")
    h = load(engine, load(engine, h, "sd_a.safetensors", 1.0, "f"), "sd_b.safetensors", 1.0, "s")
    fused = wt.fuse(h, True, True, 1.0, False, "f")
    sched = wt.schedule_weights(fused, "s", "0:0, 0.5:1", origin="ScheduleAdapterWeights #9")
    for check in (lambda: engine.check_schedules(sched), lambda: sample(engine, sched)):
        with pytest.raises(LoraOperationError) as err:
            check()
        assert err.value.origin == "ScheduleAdapterWeights #9" and err.value.input_name == "adapter_name"
        assert "'s' is scheduled, but f is fused into unet layers" in str(err.value)
    # fusing only the text encoder keeps the schedule possible
    te_only = wt.schedule_weights(wt.fuse(h, False, True, 1.0, False, "f"), "s", "0:0, 0.5:1", "hold")
    engine.check_schedules(te_only)
    sample(engine, te_only)


def test_schedule_of_a_text_encoder_only_adapter_is_refused(engine, configured, models_dir):
    write_lora_file(models_dir / "loras" / "sched_te.safetensors", "sd", "diffusers", rank=4, seed=33,
                    components=("text_encoder",))
    h = load(engine, engine.load_pipeline("builtin:tiny-sd"), "sched_te.safetensors", 1.0, "t")
    with pytest.raises(LoraOperationError,
                       match="no layers in the unet: a schedule acts on the denoiser only"):
        engine.check_schedules(wt.schedule_weights(h, "t", "0:0"))


# --- through the executor -----------------------------------------------------------------------


def test_workflow_branches_and_errors_on_the_node(configured):
    from loragraph.graph import Executor
    from test_workflows import REGISTRY, Workflow, run

    executor = Executor(REGISTRY)
    wf = Workflow()
    loaded = wf.lora(wf.pipeline(), "sd_a.safetensors", 1.0, "a")
    off_late = wf.add("ScheduleAdapterWeights", pipeline=loaded, adapter_name="a",
                      keyframes="0:1, 0.4:1, 0.6:0", interpolation="hold")
    on_late = wf.add("ScheduleAdapterWeights", pipeline=loaded, adapter_name="a", keyframes="0:0, 0.5:1",
                     interpolation="hold")
    plain, first, second = wf.sample(loaded), wf.sample(off_late), wf.sample(on_late)
    images = run(executor, wf)
    raw = raw_pipeline()
    raw_load(raw, configured, "sd_a.safetensors", "a")
    steps = STEPS  # what Workflow.sample uses
    assert max_diff(images[plain], recipe(raw, ["a"], [[1.0]] * steps, steps=steps)) <= TOL
    # 3 steps at progress 0, 1/3, 2/3: "hold" gives 1, 1, 0 and 0, 0, 1
    assert max_diff(images[first], recipe(raw, ["a"], [[unet_te(w)] for w in (1, 1, 0)], steps=steps)) <= TOL
    assert max_diff(images[second], recipe(raw, ["a"], [[unet_te(w)] for w in (0, 0, 1)], steps=steps)) <= TOL

    wf.nodes[off_late[0]]["inputs"]["keyframes"] = "0:1, 0.4:one"
    result = executor.execute(wf.nodes)  # refused before anything runs (docs/CONTRACT.md)
    assert result.status == "invalid"
    assert result.node_errors[off_late[0]]["class_type"] == "ScheduleAdapterWeights"
    assert ("input 'keyframes': keyframe 2 ('0.4:one'): strength 'one' is not a number"
            in " ".join(result.error_lines()))


def test_the_schedule_example_runs(tmp_path):
    """examples/workflows/schedule_outline.json: outline at constant strength, and off after 40%."""
    from pathlib import Path

    from loragraph import host
    from loragraph.builtin_models import demo
    from loragraph.graph import Executor, apply_overrides, load_workflow
    from loragraph.nodes import HEADLESS_NODE_CLASS_MAPPINGS
    from PIL import Image

    examples = Path(__file__).resolve().parent.parent / "examples"
    host.configure(models_dir=examples / "models", output_dir=tmp_path)
    prompt = load_workflow(examples / "workflows" / "schedule_outline.json")
    assert (prompt["3"]["inputs"]["keyframes"] == "0:1.0, 0.4:0.0"
            and prompt["3"]["inputs"]["interpolation"] == "hold")
    result = Executor(HEADLESS_NODE_CLASS_MAPPINGS).execute(
        apply_overrides(prompt, ["4.steps=10", "6.steps=10"]))
    assert result.ok, result.error_lines()
    constant, scheduled = (Image.open(next(tmp_path.rglob(f"outline_{n}_*.png")))
                           for n in ("constant", "scheduled"))
    # the picture in docs/demo-model.md: the outline LoRA hollows the triangle; off after 40% of the
    # steps, it stays filled
    assert demo.fill_ratio(scheduled) > demo.fill_ratio(constant) + 0.1
