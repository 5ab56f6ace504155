"""Acceptance of the shipped demo model `builtin:shapes` and its three demo LoRAs, measured on images.

Everything runs through the engine, as a workflow would; nothing is trained here. The measures are
the plain ones in builtin_models/demo.py (foreground colour, fill ratio, sepia distance, stripe energy).
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch
from loragraph.builtin_models import demo
from loragraph.loaders import transitions as tr
from loragraph.nodes import widget_text as wt

STEPS = 20
CFG = 7.0
SIZE = demo.NATIVE_SIZE
STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
# All 20 acceptance pairs: one case's curve wobbles at small strengths (sampling is chaotic), the
# mean over the fixed set is the property docs/demo-model.md reports; 3 cases were too few to tell.
CURVE_CASES = demo.EVAL_CASES
# "Moves its property measurably": over the 20 cases, the paired per-case change from strength 0 to 1
# is at least 3 standard errors from zero (no seed noise explains it). Replaces fixed per-LoRA minima,
# which were arbitrary numbers; the measures themselves (builtin_models/demo.py) are unchanged.
MIN_T = 3.0
ZERO_CASES = 5  # cases checked pixel for pixel at strength 0 (each costs a 20-step image)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """An engine whose models folder holds the shipped LoRAs under loras/shapes/."""
    from loragraph import host
    from loragraph.loaders.engine import Engine

    root = tmp_path_factory.mktemp("demo-models")
    (root / "loras").mkdir()
    (root / "loras" / "shapes").symlink_to(demo.LORA_DIR, target_is_directory=True)
    host.configure(models_dir=root, output_dir=root / "output")
    return Engine()


@pytest.fixture(scope="module")
def base(engine):
    return engine.load_pipeline("builtin:shapes")


def sample(engine, handle, case) -> np.ndarray:
    colour, shape, background, seed = case
    image = engine.sample(handle, demo.caption(colour, shape, background), "", seed, STEPS, CFG, SIZE, SIZE)
    assert image.shape == (1, SIZE, SIZE, 3)
    return image[0].numpy()


@pytest.fixture(scope="module")
def base_images(engine, base) -> dict:
    return {case: sample(engine, base, case) for case in demo.EVAL_CASES}


def with_lora(engine, base, name: str, strength: float):
    return tr.add_adapter(base, engine.lora_spec(base, f"shapes/{name}.safetensors", strength, ""))


def test_shipped_files_are_small_and_complete():
    files = [p for p in demo.ASSETS.rglob("*") if p.is_file()]
    assert (demo.MODEL_DIR / "model_index.json").is_file()
    assert {f"{n}.safetensors" for n in demo.LORA_NAMES} <= {p.name for p in demo.LORA_DIR.iterdir()}
    assert sum(p.stat().st_size for p in files) <= 15 * 2**20


def test_palette_ships_in_kohya_form_the_others_in_diffusers_form():
    from loragraph.loaders.store import read_lora

    formats = {n: read_lora(demo.LORA_DIR / f"{n}.safetensors").format for n in demo.LORA_NAMES}
    assert formats == {"palette": "kohya", "outline": "diffusers", "texture": "diffusers"}


def test_examples_carry_the_same_lora_files():
    from pathlib import Path

    examples = Path(__file__).resolve().parent.parent / "examples" / "models" / "loras" / "shapes"
    for name in demo.LORA_NAMES:
        assert ((examples / f"{name}.safetensors").read_bytes()
                == (demo.LORA_DIR / f"{name}.safetensors").read_bytes())


def test_the_demo_words_are_single_tokens(engine, base):
    tokenizer = engine.live(base.source).pipe.tokenizer
    for word in [*demo.COLOURS, *demo.SHAPES, *demo.BACKGROUNDS, "background"]:
        assert len(tokenizer(word).input_ids) == 3, word  # <start> word <end>


def test_prompts_get_their_colour_and_shape(base_images):
    colours = [demo.dominant_colour(img) == case[0] for case, img in base_images.items()]
    shapes = [demo.classify_shape(img) == case[1] for case, img in base_images.items()]
    assert len(colours) == 20
    assert np.mean(colours) >= 0.9, f"colour right in {sum(colours)}/20"
    assert np.mean(shapes) >= 0.8, f"shape right in {sum(shapes)}/20"


def test_native_size_generation_is_fast(engine, base, base_images):
    """20 steps at 32x32 in under 2 s of this process's CPU time (wall time depends on the neighbours)."""
    t0 = time.process_time()
    sample(engine, base, demo.EVAL_CASES[0])
    assert time.process_time() - t0 < 2.0 * torch.get_num_threads()


@pytest.mark.parametrize("name", demo.LORA_NAMES)
def test_lora_strength_moves_its_property_monotonically(engine, base, base_images, name):
    measure, direction = demo.LORA_PROPERTIES[name]
    zero = with_lora(engine, base, name, 0.0)
    for case in CURVE_CASES[:ZERO_CASES]:  # strength 0 is the base image ...
        np.testing.assert_allclose(sample(engine, zero, case), base_images[case], atol=1 / 255)
    per_case = [[measure(base_images[case]) for case in CURVE_CASES]]  # ... so its curve point is the base's
    for strength in STRENGTHS[1:]:
        # Fused: the same images within 2/255 (test below), at half the sampling cost of peft's layers.
        handle = wt.fuse(with_lora(engine, base, name, strength), True, True, 1.0, False, "")
        per_case.append([measure(sample(engine, handle, case)) for case in CURVE_CASES])
    values = np.array(per_case)
    curve = values.mean(axis=1).tolist()
    change = direction * (values[-1] - values[0])
    t = change.mean() / (change.std(ddof=1) / np.sqrt(len(change)))
    assert t >= MIN_T, (f"{measure.__name__}: strength 1 moves it by {change.mean():.4f} (t = {t:.1f}); "
                        f"{curve}")
    moved = [direction * (b - a) for a, b in itertools.pairwise(curve)]
    assert all(m > 0 for m in moved), f"{measure.__name__} not monotonic over {STRENGTHS}: {curve}"


@pytest.mark.parametrize("name", demo.LORA_NAMES)
def test_fused_and_unfused_give_the_same_image(engine, base, name):
    handle = with_lora(engine, base, name, 0.8)
    case = demo.EVAL_CASES[1]
    unfused = sample(engine, handle, case)
    fused = sample(engine, wt.fuse(handle, True, True, 1.0, False, ""), case)
    np.testing.assert_allclose(fused, unfused, atol=2 / 255)
    assert np.abs(unfused - sample(engine, base, case)).max() > 4 / 255  # the LoRA did something


def test_the_grid_workflow_is_what_its_tool_writes_and_validates(tmp_path):
    """examples/workflows/demo_grid.json (the grid in docs/demo-model.md) is tools/make_grid.py's, and it
    validates."""
    import importlib.util
    import json
    from pathlib import Path

    from loragraph import host
    from loragraph.graph import load_workflow, validate_prompt
    from loragraph.nodes import HEADLESS_NODE_CLASS_MAPPINGS

    repo = Path(__file__).resolve().parent.parent
    host.configure(models_dir=repo / "examples" / "models", output_dir=tmp_path)
    spec = importlib.util.spec_from_file_location("make_grid", repo / "tools" / "make_grid.py")
    make_grid = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_grid)
    assert json.loads(make_grid.WORKFLOW.read_text()) == make_grid.build_workflow()
    ok, error, outputs, node_errors = validate_prompt(load_workflow(make_grid.WORKFLOW),
                                                      HEADLESS_NODE_CLASS_MAPPINGS)
    assert ok and not node_errors, (error, node_errors)
    assert len(outputs) == len(make_grid.PROMPTS) * len(make_grid.columns())


def test_the_sampler_says_so_when_a_builtin_model_is_asked_for_a_size_far_from_its_own(engine, base):
    from loragraph.nodes.sampler import Sampler

    far = Sampler().run(base, "a red circle", "", 1, 1, 7.0, 136, 32)
    assert far["result"][0].shape == (1, 32, 136, 3)
    (message,) = far["ui"]["text"]
    assert "builtin:shapes" in message and "136x32" in message and "width and height to 32" in message
    near = Sampler().run(base, "a red circle", "", 1, 1, 7.0, 64, 64)
    assert isinstance(near, tuple) and near[0].shape == (1, 64, 64, 3)
