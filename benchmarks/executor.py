"""What the graph costs: the quickstart through the executor vs the same diffusers calls by hand.

    python -m benchmarks [--repeat 5] [--steps 20] [--threads N]   (or: python benchmarks/executor.py)

Prints markdown tables:

1. A cold run (no live pipeline, no parsed LoRA file, no cached output) of
   examples/workflows/quickstart.json through the executor, against a hand-written diffusers script
   doing the same operations: build the pipeline, load two LoRA files, set_adapters, fuse_lora,
   sample, save a PNG. Medians of `--repeat` alternating runs, after one warm-up of each.
   Target: the executor path within 5% of the script.
2. Re-runs in the same process: only the seed changed (must execute only Sampler and SaveImage),
   then nothing changed (must execute nothing).

Not a test: timings depend on the machine. The re-run rows are also asserted, untimed, by
tests/test_workflows.py.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
WORKFLOW = EXAMPLES / "workflows" / "quickstart.json"


def _quickstart(steps: int) -> dict[str, Any]:
    from loragraph.graph import apply_overrides, load_workflow

    prompt = load_workflow(WORKFLOW)
    return apply_overrides(prompt, [f"6.steps={steps}", "1.device=cpu", "1.dtype=float32"])


def hand_written(prompt: dict[str, Any], out_dir: Path) -> tuple[float, np.ndarray]:
    """The quickstart as a plain diffusers script, parameters read from the same workflow file."""
    from loragraph.builtin_models.catalog import BUILTIN_MODELS
    from PIL import Image

    load, lora_a, lora_b, weights, fuse, sampler = (
        prompt[i]["inputs"] for i in ("1", "2", "3", "4", "5", "6"))
    loras = EXAMPLES / "models" / "loras"
    t0 = time.perf_counter()
    pipe = BUILTIN_MODELS[load["model"].removeprefix("builtin:")][0]()
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(loras / lora_a["lora_name"]), adapter_name=lora_a["adapter_name"])
    pipe.load_lora_weights(str(loras / lora_b["lora_name"]), adapter_name=lora_b["adapter_name"])
    names = [n.strip() for n in weights["adapter_names"].split(",")]
    pipe.set_adapters(names, [float(w) for w in weights["weights"].split(",")])
    pipe.fuse_lora(components=["unet", "text_encoder"], lora_scale=fuse["lora_scale"], adapter_names=names)
    images = pipe(
        sampler["prompt"],
        negative_prompt=sampler["negative_prompt"],
        num_inference_steps=sampler["steps"],
        guidance_scale=sampler["cfg"],
        width=sampler["width"],
        height=sampler["height"],
        num_images_per_prompt=sampler["batch_size"],
        generator=torch.Generator("cpu").manual_seed(sampler["seed"]),
        output_type="np",
    ).images
    array = np.clip(255.0 * images[0], 0, 255).astype(np.uint8)  # as SaveImage converts
    Image.fromarray(array).save(out_dir / "script.png", compress_level=4)
    return time.perf_counter() - t0, array


def through_executor(prompt: dict[str, Any]) -> tuple[float, Any, np.ndarray]:
    """A cold executor run: fresh Executor, no live pipeline, no parsed LoRA file in memory."""
    from loragraph import host
    from loragraph.graph import Executor
    from loragraph.loaders import store
    from loragraph.loaders.engine import get_engine
    from loragraph.nodes import HEADLESS_NODE_CLASS_MAPPINGS
    from PIL import Image

    get_engine().pipelines.clear()
    store.clear_lora_cache()
    executor = Executor(HEADLESS_NODE_CLASS_MAPPINGS)
    t0 = time.perf_counter()
    result = executor.execute(prompt)
    wall = time.perf_counter() - t0
    if not result.ok:
        raise SystemExit(f"quickstart failed: {result.error_lines()}")
    image = result.outputs["7"]["images"][0]
    array = np.asarray(Image.open(host.output_dir() / image["subfolder"] / image["filename"]))
    return wall, (executor, result), array


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each path (default 5)")
    parser.add_argument("--steps", type=int, default=20, help="sampler steps (default 20, as the quickstart)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default: torch's own choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from loragraph import host
    from loragraph.graph import apply_overrides

    out_dir = Path(tempfile.mkdtemp(prefix="loragraph-bench-"))
    host.configure(models_dir=EXAMPLES / "models", output_dir=out_dir)
    prompt = _quickstart(args.steps)

    hand_written(prompt, out_dir)  # warm-up: first-call kernel setup, imports, allocator
    through_executor(prompt)
    script_s, graph_s, bookkeeping_s = [], [], []
    for _ in range(args.repeat):
        t, script_image = hand_written(prompt, out_dir)
        script_s.append(t)
        t, (executor, result), graph_image = through_executor(prompt)
        graph_s.append(t)
        bookkeeping_s.append(result.overhead_s)
    script, graph = statistics.median(script_s), statistics.median(graph_s)
    pixel_diff = int(np.abs(script_image.astype(int) - graph_image.astype(int)).max())

    # Re-runs on the last executor, which holds the cache and the fused live pipeline.
    reseeded = apply_overrides(prompt, ["6.seed=43"])
    t0 = time.perf_counter()
    seed_result = executor.execute(reseeded)
    seed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    same_result = executor.execute(reseeded)
    same_s = time.perf_counter() - t0

    def executed(res: Any) -> str:
        return ", ".join(f"{n} {prompt[n]['class_type']}" for n in res.executed) or "nothing"

    w = sys.stdout.write
    sampler = prompt["6"]["inputs"]
    w(f"Quickstart ({args.steps} steps, {sampler['width']}x{sampler['height']}, "
      f"{prompt['1']['inputs']['model']}, 2 LoRAs fused), median of {args.repeat}; "
      f"torch {torch.__version__}, {torch.get_num_threads()} thread{'s' * (torch.get_num_threads() != 1)}, "
      f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs\n\n")
    w("| run | wall | vs script | notes |\n|---|---:|---:|---|\n")
    w(f"| hand-written diffusers script | {script:.3f} s | - | build, 2x load_lora_weights, set_adapters, "
      f"fuse_lora, sample, save PNG |\n")
    w(f"| loragraph executor, cold | {graph:.3f} s | {100 * (graph - script) / script:+.1f}% | executor "
      f"bookkeeping {1000 * statistics.median(bookkeeping_s):.1f} ms; same image (max diff "
      f"{pixel_diff}/255) |\n")
    w(f"| re-run, only the seed changed | {seed_s:.3f} s | | executed: {executed(seed_result)} |\n")
    w(f"| re-run, unchanged | {1000 * same_s:.1f} ms | | executed: {executed(same_result)} |\n")
    ok = (
        [prompt[n]["class_type"] for n in seed_result.executed] == ["Sampler", "SaveImage"]
        and same_result.executed == []
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
