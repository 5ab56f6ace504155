"""A stack of LoRAs loads in time that does not grow with the adapters already loaded.

peft's loader walks every module and parameter of the model it loads into; the fence's
`others_set_aside` has each fresh load see the base model and the new adapter only (docs/CONTRACT.md,
"Stack growth"). The oracle is raw diffusers loading the same files one after the other: the model
it ends with (module order, parameter values and flags) and its image, bit for bit. The timing is
benchmarks/stacking.py's and tools/probe_hostile_round2.py's (row 22), never a unit test's.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import PROMPT, SIZE, STEPS, raw_pipeline, render
from loragraph import host
from loragraph.loaders import fence
from loragraph.loaders import transitions as tr
from loragraph.loaders.engine import Engine
from loragraph.testing import write_lora_file

# peft 0.20 turns earlier adapters' requires_grad off on a load, which a set-aside table does not see:
# the set-aside runs only on the peft releases it was checked on (fence/stacking.py, PEFT_VERIFIED).
needs_verified_peft = pytest.mark.skipif(
    fence.installed_versions()["peft"].rsplit(".", 1)[0] not in fence.stacking.PEFT_VERIFIED,
    reason="the set-aside is checked on peft " + ", ".join(fence.stacking.PEFT_VERIFIED) + " only",
)

STACK = 6  # enough adapters that a walk growing with them shows; few, for a fast test
WEIGHTS = [0.3 + 0.1 * i for i in range(STACK)]


@pytest.fixture(scope="module")
def stack_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("stack_models")
    (root / "loras").mkdir()
    for i in range(STACK):
        write_lora_file(root / "loras" / f"stack{i}.safetensors", "sd", "diffusers", rank=4, seed=300 + i)
    return root


def model_state(pipe) -> dict[str, list]:
    """Everything a load leaves in the LoRA-taking components: module tree, parameters (name, value,
    requires_grad, in order), and each tuner layer's active adapters and scalings."""
    out: dict[str, list] = {}
    for comp in fence.loadable_components(pipe):
        model = getattr(pipe, comp)
        out[f"{comp} modules"] = [n for n, _ in model.named_modules()]
        params = model.named_parameters()
        out[f"{comp} parameters"] = [(n, p.requires_grad, p.detach().clone()) for n, p in params]
        out[f"{comp} layers"] = [
            (n, list(m.active_adapters), dict(m.scaling))
            for n, m in model.named_modules() if hasattr(m, "merged_adapters")
        ]
    return out


def assert_same_state(got: dict[str, list], want: dict[str, list]) -> None:
    assert got.keys() == want.keys()
    for key in want:
        if key.endswith("parameters"):
            assert [(n, g) for n, g, _ in got[key]] == [(n, g) for n, g, _ in want[key]], key
            assert all(torch.equal(a[2], b[2]) for a, b in zip(got[key], want[key], strict=True)), key
        else:
            assert got[key] == want[key], key


def raw_load(pipe, stack_dir, i: int) -> None:
    folder = str(stack_dir / "loras")
    pipe.load_lora_weights(folder, weight_name=f"stack{i}.safetensors", adapter_name=f"s{i}")


def parameter_count(pipe) -> int:
    return sum(1 for c in fence.loadable_components(pipe) for _ in getattr(pipe, c).parameters())


@needs_verified_peft
def test_a_load_inside_the_set_aside_sees_only_the_base_and_ends_as_raw_diffusers(stack_dir):
    """Raw diffusers loads three files; here the third loads inside `others_set_aside`: it sees the
    base model's parameters only, and afterwards the model and its image are raw diffusers' exactly."""
    raw = raw_pipeline()
    base_count = parameter_count(raw)
    for i in range(3):
        raw_load(raw, stack_dir, i)
    want = model_state(raw)
    want_image = render(raw)

    pipe = raw_pipeline()
    for i in range(2):
        raw_load(pipe, stack_dir, i)
    two_image = render(pipe)
    comps = [getattr(pipe, c) for c in fence.loadable_components(pipe)]
    seen = []
    with fence.fast_paths_mode("on"), fence.others_set_aside(comps, "s2"):
        seen.append(parameter_count(pipe))
        raw_load(pipe, stack_dir, 2)
    assert seen == [base_count]
    assert_same_state(model_state(pipe), want)
    image = render(pipe)
    assert torch.equal(image, want_image)
    assert not torch.equal(image, two_image)  # the third LoRA changes the image


def test_the_fallback_sets_nothing_aside(stack_dir):
    pipe = raw_pipeline()
    raw_load(pipe, stack_dir, 0)
    count = parameter_count(pipe)
    comps = [getattr(pipe, c) for c in fence.loadable_components(pipe)]
    with fence.fast_paths_mode("off"), fence.others_set_aside(comps, "s1"):
        assert parameter_count(pipe) == count


def test_a_failed_load_puts_every_other_adapter_back(stack_dir):
    """A load that raises inside the block leaves the adapters loaded before as they were."""
    pipe = raw_pipeline()
    for i in range(2):
        raw_load(pipe, stack_dir, i)
    before = model_state(pipe)
    comps = [getattr(pipe, c) for c in fence.loadable_components(pipe)]
    with (pytest.raises(RuntimeError, match="mid-load"), fence.fast_paths_mode("on"),
          fence.others_set_aside(comps, "s2")):
        raise RuntimeError("mid-load")
    assert_same_state(model_state(pipe), before)


def engine_stack(stack_dir, set_aside: bool, monkeypatch) -> tuple[list[int], torch.Tensor, dict]:
    """The engine loading the stack: the parameters the loader sees at each load, the image, the model."""
    host.configure(models_dir=stack_dir, output_dir=stack_dir / "output")
    seen: list[int] = []
    load = fence.load_lora_weights

    def counting(pipe, *args, **kwargs):
        seen.append(parameter_count(pipe))
        return load(pipe, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(fence, "load_lora_weights", counting)
        if not set_aside:  # every adapter in place during each load, as without the set-aside
            patch.setattr(fence, "others_set_aside", lambda *a, **k: contextlib.nullcontext())
        engine = Engine()
        h = engine.load_pipeline("builtin:tiny-sd")
        for i in range(STACK):
            h = tr.add_adapter(h, engine.lora_spec(h, f"stack{i}.safetensors", WEIGHTS[i], f"s{i}"))
        image = engine.sample(h, PROMPT, "", 1, STEPS, 7.0, SIZE, SIZE)
        return seen, image, model_state(engine.live(h.source).pipe)


@needs_verified_peft
def test_each_load_of_a_stack_sees_the_same_model_and_the_images_stay_bit_identical(stack_dir, monkeypatch):
    """Through the engine, the loader sees as many parameters at the sixth load as at the first (it
    saw more with each adapter before); the stack's model and image are bit-identical to the loads
    with every adapter in place, and to raw diffusers loading the same files."""
    with fence.fast_paths_mode("auto"):
        seen, image, state = engine_stack(stack_dir, True, monkeypatch)
        seen_before, image_before, state_before = engine_stack(stack_dir, False, monkeypatch)
    assert len(set(seen)) == 1 and len(seen) == STACK, seen
    assert seen_before[-1] > seen_before[0]  # the walk the set-aside saves: it grew with the stack
    assert torch.equal(image, image_before)
    assert_same_state(state, state_before)
    raw = raw_pipeline()
    for i in range(STACK):
        raw_load(raw, stack_dir, i)
    raw.set_adapters([f"s{i}" for i in range(STACK)], WEIGHTS)
    assert torch.equal(image, render(raw))
    first = raw_pipeline()
    raw_load(first, stack_dir, 0)
    first.set_adapters(["s0"], WEIGHTS[:1])
    assert not torch.equal(image, render(first))  # the stack's other LoRAs change the image
