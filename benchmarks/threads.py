"""torch threads on this machine: the quickstart and an SD1.5-size UNet step, idle and with a core busy.

    python -m benchmarks.threads [--threads 1,2] [--repeats 3] [--no-sd15] [--no-busy]

Every measurement runs in a fresh process (``--child``), so each one pays what a user pays:

- ``first image``: ``loragraph run examples/workflows/quickstart.json`` from process start to the
  image written, imports included (the wall clock of the whole command);
- ``sampler``: the quickstart's Sampler node alone (20 steps at 32x32), median of ``--repeats`` seeds
  in that process, after the first;
- ``sd15 step``: one UNet pass of an SD1.5-size UNet (diffusers' defaults, random weights) at 64x64
  latents with CFG (batch 2): one denoising step of SD1.5 at 512x512 (``--latent 32``: 256x256).

Each row runs once with the machine as it is and once (``busy``) with one extra process spinning on
a core, the situation where torch's default threads oversubscribe. ``default`` is the thread count
the ``--threads``-less rule (``cli/threads.py``) picks at that moment. The load average is
printed with the table: figures taken on a shared machine are provisional.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "examples" / "workflows" / "quickstart.json"
MODELS = REPO / "examples" / "models"


def _child_sampler(repeats: int) -> dict[str, float]:
    """The quickstart's Sampler, warm (pipeline built, LoRAs fused), median over fresh seeds."""
    from loragraph import host
    from loragraph.graph import Executor, apply_overrides, load_workflow
    from loragraph.nodes import HEADLESS_NODE_CLASS_MAPPINGS

    host.configure(models_dir=MODELS, output_dir=tempfile.mkdtemp(prefix="lg-threads-"))
    executor = Executor(HEADLESS_NODE_CLASS_MAPPINGS)
    base = load_workflow(QUICKSTART)
    times = []
    for seed in range(repeats + 1):
        result = executor.execute(apply_overrides(base, [f"6.seed={seed}"]))
        if not result.ok:
            raise SystemExit(f"quickstart failed: {result.error_lines()}")
        times.append(result.timings["6"])
    return {"sampler_s": statistics.median(times[1:])}


def _child_sd15(repeats: int, latent: int) -> dict[str, float]:
    """One SD1.5 UNet step (batch 2 for CFG) at ``latent``x``latent`` latents, median of ``repeats``."""
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(cross_attention_dim=768, sample_size=64)  # diffusers' defaults = SD1.5
    unet = unet.to_empty(device="cpu").eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in unet.parameters():  # random init in one pass (real initialisers take minutes here)
            p.normal_(0.0, 0.02, generator=gen)
        for b in unet.buffers():
            b.zero_()
    latents = torch.randn(2, 4, latent, latent, generator=gen)
    text = torch.randn(2, 77, 768, generator=gen)
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            unet(latents, 500, encoder_hidden_states=text)
            times.append(time.perf_counter() - t0)
    return {"sd15_step_s": statistics.median(times[1:])}


def _child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.child_threads)
    out = _child_sd15(args.repeats, args.latent) if args.child == "sd15" else _child_sampler(args.repeats)
    print(json.dumps(out))


def _run_child(kind: str, threads: int, repeats: int, latent: int = 64) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "benchmarks.threads", "--child", kind, "--child-threads", str(threads),
           "--repeats", str(repeats), "--latent", str(latent)]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{kind} at {threads} threads failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _first_image(threads: int) -> float:
    """Wall clock of ``loragraph run quickstart --threads N``, process start to exit."""
    out = tempfile.mkdtemp(prefix="lg-threads-")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    cmd = [sys.executable, "-m", "loragraph", "run", str(QUICKSTART), "--models-dir", str(MODELS),
           "--output-dir", out, "--threads", str(threads)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"loragraph run failed:\n{done.stderr[-2000:]}")
    return wall


def _spinner() -> subprocess.Popen:
    """One process that keeps one core busy (what another user's job does to ours)."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="", help="comma-separated thread counts (default: 1..CPUs)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-sd15", action="store_true",
                        help="skip the SD1.5-size UNet step (~10-40 s each)")
    parser.add_argument("--no-busy", action="store_true", help="skip the rows with one core kept busy")
    parser.add_argument("--latent", type=int, default=64,
                        help="SD1.5 latent size (default 64: 512x512 images; 32 is 4x faster)")
    parser.add_argument("--child", choices=["sampler", "sd15"], help=argparse.SUPPRESS)
    parser.add_argument("--child-threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args)
        return 0

    from loragraph.cli.threads import available_cpus, default_threads, load_average

    cpus = available_cpus()
    counts = [int(x) for x in args.threads.split(",") if x] or list(range(1, cpus + 1))
    rows = []
    for busy in ([False] if args.no_busy else [False, True]):
        spinner = _spinner() if busy else None
        try:
            if busy:
                time.sleep(2.0)
            for n in counts:
                load = load_average()
                row = {"busy": busy, "threads": n, "load": load, "default": default_threads()}
                row["first_image_s"] = _first_image(n)
                row.update(_run_child("sampler", n, args.repeats))
                if not args.no_sd15:
                    row.update(_run_child("sd15", n, max(1, args.repeats - 1), args.latent))
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()

    import torch

    print(f"torch {torch.__version__}, {cpus} CPUs available, {time.strftime('%Y-%m-%d %H:%M')}; "
          f"load average {' / '.join(f'{x:.2f}' for x in os.getloadavg())} (1/5/15 min) at the end\n")
    size = 8 * args.latent
    print("| one core busy | threads | load at start | default rule picks | first image (process) | "
          f"Sampler, 20 steps 32x32 | SD1.5 UNet step, {size}x{size} CFG |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        sd = f"{r['sd15_step_s']:.2f} s" if "sd15_step_s" in r else "-"
        print(f"| {'yes' if r['busy'] else 'no'} | {r['threads']} | {r['load']:.2f} | {r['default']} | "
              f"{r['first_image_s']:.2f} s | {r['sampler_s']:.3f} s | {sd} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
