"""Write the LoRA files the model-family example workflows use, into examples/models/loras/.

    python tools/make_family_loras.py [--out DIR] [--check]

Made for the built-in tiny pipelines from fixed seeds, so every run writes the same bytes (`--check`
verifies the shipped files instead of writing). They are committed, so the examples run on a fresh
clone without this script; it documents where they come from and rebuilds them if a tiny pipeline or
the file writer changes.

- wan22/high_noise.safetensors: a single-expert file for Wan 2.2's high-noise expert (`transformer`),
  diffusers format, rank 4, alpha 2 (examples/workflows/wan22_lora_pair.json loads it with target auto).
- wan22/low_noise.safetensors: one for the low-noise expert, in musubi-tuner's keys
  (`lora_unet_blocks_N_...`), rank 4, alpha 4; the workflow puts it on `transformer_2` (target).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "examples" / "models" / "loras"

# relative path -> (built-in model, write_lora_file keyword arguments). Seeds are arbitrary but fixed.
FAMILY_LORAS = {
    "wan22/high_noise.safetensors": ("tiny-wan22", {"fmt": "diffusers", "rank": 4, "alpha": 2, "seed": 301}),
    "wan22/low_noise.safetensors": ("tiny-wan22", {"fmt": "wan-musubi", "rank": 4, "alpha": 4, "seed": 302}),
}


def write_family_loras(out: Path) -> dict[str, Path]:
    """Write every family LoRA into `out`; returns {relative path: path}."""
    from loragraph.builtin_models.catalog import BUILTIN_MODELS
    from loragraph.testing import WAN_TARGETS, write_lora_file

    written = {}
    for name, (model, kwargs) in FAMILY_LORAS.items():
        pipe = BUILTIN_MODELS[model][0]()
        # scale 1.5: two transformer blocks carry the whole effect, so the deltas are made larger
        written[name] = write_lora_file(out / name, pipe=pipe, components=("transformer",),
                                        targets=WAN_TARGETS, scale=1.5, **kwargs)
    return written


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _same_lora(fresh: Path, kept: Path) -> bool:
    """Same keys, metadata and tensors, to float32 rounding: the deltas' size is read from a layer's
    spread, whose last bit depends on how many threads summed it (the bytes then differ)."""
    import torch
    from safetensors import safe_open

    if not kept.is_file():
        return False
    with safe_open(str(fresh), "pt") as a, safe_open(str(kept), "pt") as b:
        names = a.keys()
        if a.metadata() != b.metadata() or sorted(names) != sorted(b.keys()):
            return False
        return all(torch.allclose(a.get_tensor(k), b.get_tensor(k), rtol=1e-5, atol=1e-7) for k in names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"folder to write (default: {DEFAULT_OUT})")
    parser.add_argument("--check", action="store_true",
                        help="verify the files in --out instead of writing them")
    args = parser.parse_args(argv)

    if not args.check:
        for path in write_family_loras(args.out).values():
            sys.stdout.write(f"wrote {path} ({path.stat().st_size:,} bytes, sha256 {_sha256(path)[:12]})\n")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = write_family_loras(Path(tmp))
        stale = [n for n, p in fresh.items() if not _same_lora(p, args.out / n)]
    for name in FAMILY_LORAS:
        sys.stdout.write(f"{name}: {'differs or missing' if name in stale else 'ok'}\n")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
