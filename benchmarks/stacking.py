"""How loading a stack of n LoRAs grows with n: loragraph, loragraph without the fence's
`others_set_aside` (every load walks all adapters loaded before), and raw diffusers.

`python -m loragraph.benchmarks.stacking [--counts 5,10,20,50] [--repeats 3]` on builtin:tiny-sd
(CPU, fp32). Each cell is the best of `--repeats` loads of the whole stack onto a fresh pipeline;
"/n" is the time per adapter and "x vs 5" the growth from the first count (linear: the count ratio).
Raw diffusers loads the same files with `pipe.load_lora_weights(folder, weight_name=..., adapter_name=...)`.
The images of the stack with and without the set-aside are compared too (they must be bit-identical).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import diffusers
import torch
import transformers

from .. import host
from ..builtin_models.tiny_sd import build_tiny_sd
from ..loaders import fence
from ..loaders import transitions as tr
from ..loaders.engine import Engine
from ..testing import write_lora_file


def loragraph_stack(count: int, set_aside: bool) -> tuple[float, torch.Tensor]:
    """Seconds to realize a stack of `count` LoRAs, and a sample from it."""
    saved = fence.others_set_aside
    if not set_aside:  # the load as before the set-aside: every adapter in place
        fence.others_set_aside = lambda *a, **k: contextlib.nullcontext()
    try:
        engine = Engine()
        h = engine.load_pipeline("builtin:tiny-sd", dtype="float32", device="cpu")
        for i in range(count):
            h = tr.add_adapter(h, engine.lora_spec(h, f"stack{i}.safetensors", 0.3, f"s{i}"))
        started = time.perf_counter()
        live, _ = engine.realize(h)
        seconds = time.perf_counter() - started
        image = live.pipe("a photo", num_inference_steps=2, height=32, width=32, output_type="pt",
                          generator=torch.Generator().manual_seed(0)).images
        return seconds, image
    finally:
        fence.others_set_aside = saved


def diffusers_stack(folder: Path, count: int) -> float:
    pipe = build_tiny_sd()
    started = time.perf_counter()
    for i in range(count):
        pipe.load_lora_weights(str(folder), weight_name=f"stack{i}.safetensors", adapter_name=f"s{i}")
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="5,10,20,50")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]
    torch.set_num_threads(1)  # the shared CI-sized machine: one core each, stable figures
    diffusers.utils.logging.set_verbosity_error()  # raw diffusers' per-load reports and bars
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="loragraph-stacking-") as root:
        folder = Path(root) / "loras"
        folder.mkdir()
        for i in range(max(counts)):
            write_lora_file(folder / f"stack{i}.safetensors", "sd", "diffusers", seed=200 + i)
        host.configure(root, root)
        rows = []
        for n in counts:
            ours, before, raw = [], [], []
            for _ in range(args.repeats):
                t, image = loragraph_stack(n, True)
                ours.append(t)
                t, image_before = loragraph_stack(n, False)
                before.append(t)
                raw.append(diffusers_stack(folder, n))
            same = torch.equal(image, image_before)
            rows.append((n, min(ours), min(before), min(raw), same))
    first = rows[0]
    grow = f"x vs {first[0]}"
    header = [("n", 4), ("loragraph s", 12), ("/n ms", 7), (grow, 8), ("without set-aside s", 20), (grow, 8),
              ("diffusers s", 12), (grow, 8), ("ours/diffusers", 15), ("same image", 10)]
    print(" ".join(f"{title:>{width}}" for title, width in header))
    for n, ours_s, before_s, raw_s, same in rows:
        cells = [f"{n}", f"{ours_s:.2f}", f"{1000 * ours_s / n:.0f}", f"{ours_s / first[1]:.2f}",
                 f"{before_s:.2f}", f"{before_s / first[2]:.2f}", f"{raw_s:.2f}", f"{raw_s / first[3]:.2f}",
                 f"{ours_s / raw_s:.2f}", "yes" if same else "NO"]
        print(" ".join(f"{cell:>{width}}" for cell, (_, width) in zip(cells, header, strict=True)))
    return 0 if all(r[4] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
