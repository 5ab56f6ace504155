"""The fence (loaders/fence/): the only modules that names a private diffusers/peft attribute, with a
public fallback that really runs outside the verified versions and gives the same images.

The image oracle is raw diffusers loading the files from disk. The same test runs in CI on the
lowest and the highest diffusers/peft of pyproject's ranges (.ci/run), so both ends are checked
against raw diffusers, with the fast paths and with the fallbacks.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest
from conftest import PROMPT, SIZE, STEPS, max_diff, raw_pipeline, render
from loragraph.loaders import fence
from loragraph.loaders import transitions as tr
from loragraph.loaders.engine import Engine
from loragraph.nodes import widget_text as wt

pytestmark = pytest.mark.lowend  # in .ci/run's run on the lowest diffusers/peft too

PACKAGE = Path(__file__).resolve().parents[1]
TOL = 1 / 255
FENCE = PACKAGE / "loaders" / "fence"  # any module inside it may name a private diffusers/peft attribute

# --- no private name outside the fence ----------------------------------------------------------------

# Private names a library defines: functions, classes, module globals, class attributes and attributes
# set on self/cls. torch's Module internals count too (peft keeps per-adapter layers in ModuleDicts).
_DEFINED = re.compile(
    r"^\s*(?:async\s+)?def\s+(_[A-Za-z]\w*[A-Za-z0-9])\s*\(|^\s*class\s+(_[A-Za-z]\w*)"
    r"|^\s*(_[A-Za-z]\w*[A-Za-z0-9])\s*(?::[^=\n]*)?=(?!=)|\b(?:self|cls)\.(_[A-Za-z]\w*[A-Za-z0-9])\s*=(?!=)",
    re.MULTILINE,
)
_TORCH_INTERNALS = {"_modules", "_parameters", "_buffers"}


def private_names(*libraries: str) -> set[str]:
    names = set(_TORCH_INTERNALS)
    for lib in libraries:
        root = Path(importlib.util.find_spec(lib).origin).parent
        for path in root.rglob("*.py"):
            for m in _DEFINED.finditer(path.read_text(encoding="utf-8", errors="replace")):
                name = next(g for g in m.groups() if g)
                if not name.startswith("__"):
                    names.add(name)
    return names


def private_touches(source: str, private: set[str]) -> list[str]:
    """Where a module names a private diffusers/peft attribute: `x._name`, an import of one from
    diffusers/peft, or the name as a string (getattr/setattr/hasattr)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in private:
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("diffusers", "peft"):
            found += [f"line {node.lineno}: import {a.name}" for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in private:
            found.append(f"line {node.lineno}: {node.value!r}")
    return found


def package_modules() -> list[Path]:
    skip = {"tests", "node_modules", "web", "benchmarks", "tools", ".git"}
    return [p for p in PACKAGE.rglob("*.py") if not skip & set(p.relative_to(PACKAGE).parts)]


@pytest.fixture(scope="module")
def private() -> set[str]:
    names = private_names("diffusers", "peft")
    # the package's own private names are its business (and `_load` etc. are common words)
    ours = set()
    for path in package_modules():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name.startswith("_"):
                ours.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and node.id.startswith("_"):
                ours.add(node.id)
            elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                  and isinstance(node.value, ast.Name) and node.value.id == "self"):
                ours.add(node.attr)
    known = {"_lora_loadable_modules", "_merged_adapters", "_active_adapter",
             "_func_optionally_disable_offloading"}
    assert known <= names, known - names  # the collector finds what the fence touches
    return (names - ours) | known | _TORCH_INTERNALS


def test_no_module_outside_the_fence_names_a_private_diffusers_or_peft_attribute(private):
    offenders = {}
    for path in package_modules():
        if FENCE in path.parents:
            continue
        touches = private_touches(path.read_text(), private)
        if touches:
            offenders[str(path.relative_to(PACKAGE))] = touches
    assert offenders == {}, f"private diffusers/peft names outside loaders/fence/: {offenders}"
    # and the check sees them where they are
    assert any(private_touches(p.read_text(), private) for p in FENCE.glob("*.py"))


def test_the_check_catches_each_kind_of_touch(private):
    for line in (
        "pipe._merged_adapters = set()",
        "names = getattr(cls, '_lora_loadable_modules', ())",
        "from diffusers.loaders.lora_base import _func_optionally_disable_offloading",
        "table = layer.lora_A._modules",
        "layer._active_adapter = ['x']",
    ):
        assert private_touches(line, private), line
    assert not private_touches("self._entries = {}\nx = pipe.get_list_adapters()", private)


# --- the fallback is selected outside the verified versions ------------------------------------------


@pytest.fixture()
def other_versions(monkeypatch):
    """diffusers/peft releases the fast paths were not verified on."""
    monkeypatch.setattr(fence, "installed_versions", lambda: {"diffusers": "0.99.0", "peft": "0.99.0"})
    fence.versions_verified.cache_clear()
    yield
    fence.versions_verified.cache_clear()


def test_fast_paths_run_on_the_verified_versions_only(other_versions):
    with fence.fast_paths_mode("auto"):
        assert not fence.fast_paths() and not fence.hotswap_available()
    with fence.fast_paths_mode("on"):
        assert fence.fast_paths()


def test_the_installed_versions_are_verified_ones():
    """CI runs on both ends of pyproject's ranges: each must be a release the fence verified."""
    found = fence.installed_versions()
    assert all(fence._minor(found[n]) in fence.VERIFIED[n] for n in fence.VERIFIED), found
    with fence.fast_paths_mode("auto"):
        assert fence.fast_paths()
    with fence.fast_paths_mode("off"):
        assert not fence.fast_paths()


def test_loadable_components_fallback_lists_what_diffusers_lists():
    from loragraph.testing import tiny_pipeline

    for kind in ("sd", "sdxl", "sd3"):
        pipe = tiny_pipeline(kind)
        with fence.fast_paths_mode("on"):
            fast = fence.loadable_components(pipe)
        with fence.fast_paths_mode("off"):
            slow = fence.loadable_components(pipe)
        assert fast == slow and fast, kind


def _layer_settings(pipe) -> dict[str, tuple[list[str], dict[str, float]]]:
    """Every tuner layer's active adapters and scales: what `set_adapters` sets."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {
        f"{c}.{n}": (list(m.active_adapters), dict(m.scaling))
        for c in ("unet", "text_encoder")
        for n, m in getattr(pipe, c).named_modules()
        if isinstance(m, BaseTunerLayer)
    }


def test_set_adapters_fallback_sets_what_the_fast_path_sets(configured):
    """Entry 7: the per-layer `set_adapters` and diffusers' own call leave every layer the same,
    numbers and per-component dicts alike (sd_c has no text-encoder layers)."""
    from conftest import raw_load
    from loragraph.loaders.live import tuner_layers

    pipe = raw_pipeline()
    for name, adapter in (("sd_a.safetensors", "a"), ("sd_c.safetensors", "c")):
        raw_load(pipe, configured, name, adapter)

    def layers(comp):
        return list(tuner_layers(getattr(pipe, comp)))

    comps = fence.loadable_components(pipe)
    names = ("a", "c")
    cases = ([0.7, 0.3], [0.5, {"unet": 0.4, "text_encoder": 0.9}], [{"text_encoder": 0.2}, 1.5])
    got = {}
    for i, weights in enumerate(cases):
        for mode in ("on", "off"):
            pipe.set_adapters(["a"], [1.0])  # something else first: each call must set every layer
            with fence.fast_paths_mode(mode):
                fence.set_adapters(pipe, layers, comps, names, weights)
            got[i, mode] = _layer_settings(pipe)
        assert got[i, "on"] == got[i, "off"], weights
        assert any(s["c"] != s["a"] for _, s in got[i, "on"].values() if "c" in s), weights
    with fence.fast_paths_mode("on"):  # the same names again: only the scales change
        fence.set_adapters(pipe, layers, comps, names, cases[0])
        fence.set_adapters(pipe, layers, comps, names, cases[1], same_names=True)
    assert _layer_settings(pipe) == got[1, "off"]


def _base_weights(pipe) -> dict[str, object]:
    return {
        f"{c}.{k.replace('.base_layer', '')}": v.clone()
        for c in ("unet", "text_encoder")
        for k, v in getattr(pipe, c).state_dict().items()
        if "lora_" not in k
    }


def _merged(pipe) -> dict[str, list[str]]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {
        f"{c}.{n}": list(m.merged_adapters)
        for c in ("unet", "text_encoder")
        for n, m in getattr(pipe, c).named_modules()
        if isinstance(m, BaseTunerLayer) and m.merged_adapters
    }


def test_fusion_fallback_merges_and_unmerges_as_the_fast_path(configured):
    """Entry 6: fusing by GEMM with peft's record kept by hand, and peft's own merge()/unmerge(),
    fuse the same weights (up to rounding) with the same record, and both unfuse bit-exactly."""
    import torch
    from loragraph.loaders.live import tuner_layers
    from peft.tuners.lora.layer import Linear

    got = {}
    for mode in ("on", "off"):
        with fence.fast_paths_mode(mode):
            engine = Engine()
            base = engine.load_pipeline("builtin:tiny-sd")
            h = tr.add_adapter(base, engine.lora_spec(base, "sd_a.safetensors", 0.8, "a"))
            h = tr.add_adapter(h, engine.lora_spec(h, "sd_c.safetensors", 0.6, "c"))
            live, _ = engine.realize(h)
            # a plain LoRA Linear
            layer = next(m for _, m in tuner_layers(live.pipe.unet) if isinstance(m, Linear))
            assert fence.merges_by_gemm(layer, ["a"], layer.get_base_layer().weight) == (mode == "on")
            original = _base_weights(live.pipe)
            live, _ = engine.realize(tr.fuse(h, True, True, 0.7, False))
            fused, merged = _base_weights(live.pipe), _merged(live.pipe)
            live, _ = engine.realize(h)
            restored = _base_weights(live.pipe)
            assert all(torch.equal(restored[k], v) for k, v in original.items()), mode  # exact unfuse
            assert _merged(live.pipe) == {}, mode
            got[mode] = (fused, merged)
    (fast, fast_merged), (slow, slow_merged) = got["on"], got["off"]
    assert fast_merged == slow_merged and fast_merged
    assert any(not torch.equal(fast[k], original[k]) for k in original)  # something was fused
    assert max((fast[k] - slow[k]).abs().max().item() for k in fast) <= 1e-5


# --- the same images as raw diffusers, fast paths and fallbacks alike --------------------------------


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_both_paths_give_raw_diffusers_images(configured, mode):
    """Load (a file whose alpha != rank is only in its header, and a kohya file), switch between two
    same-shaped LoRAs (a hotswap on the fast path, a load on the fallback), fuse and unfuse: every
    image is raw diffusers' from the files on disk."""
    with fence.fast_paths_mode(mode):
        engine = Engine()
        base = engine.load_pipeline("builtin:tiny-sd")

        def spec(h, name, w, a):
            return engine.lora_spec(h, name, w, a)

        both = tr.add_adapter(base, spec(base, "sub/sd_d.safetensors", 0.9, "d"))
        both = tr.add_adapter(both, spec(both, "sd_b.safetensors", 0.6, "b"))
        image = engine.sample(both, PROMPT, "", 1, STEPS, 7.0, SIZE, SIZE)
        raw = raw_pipeline()
        for name, adapter in (("sub/sd_d.safetensors", "d"), ("sd_b.safetensors", "b")):
            path = configured / "loras" / name
            raw.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter)
        raw.set_adapters(["d", "b"], [0.9, 0.6])
        assert max_diff(image, render(raw)) <= TOL

        fused = wt.fuse(both, True, True, 1.0, False, "")
        assert max_diff(engine.sample(fused, PROMPT, "", 1, STEPS, 7.0, SIZE, SIZE), image) <= TOL
        assert max_diff(engine.sample(both, PROMPT, "", 1, STEPS, 7.0, SIZE, SIZE), image) <= TOL

        u1 = tr.add_adapter(base, spec(base, "sd_u1.safetensors", 0.8, "u1"))
        u2 = tr.add_adapter(base, spec(base, "sd_u2.safetensors", 0.7, "u2"))
        engine.sample(u1, PROMPT, "", 1, STEPS, 7.0, SIZE, SIZE)
        live = engine.live(base.source)
        live.ops.clear()
        switched = engine.sample(u2, PROMPT, "", 1, STEPS, 7.0, SIZE, SIZE)
        swapped = any(op.startswith("hotswap") for op in live.ops)
        assert swapped == fence.hotswap_available()
        raw = raw_pipeline()
        raw.load_lora_weights(str(configured / "loras"), weight_name="sd_u2.safetensors", adapter_name="u2")
        raw.set_adapters(["u2"], [0.7])
        assert max_diff(switched, render(raw)) <= TOL
