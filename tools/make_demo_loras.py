"""Write the demo LoRA files the example workflows use, into examples/models/loras/.

    python tools/make_demo_loras.py [--out DIR] [--check]

The files are made for the built-in `tiny-sd` pipeline from fixed seeds, so every run writes the
same bytes (`--check` verifies the shipped files instead of writing). They are committed, so the
examples run on a fresh clone without this script; it documents where they come from and rebuilds
them if the tiny pipeline or the file writer changes.

- demo_a.safetensors: diffusers format (unet + text encoder), rank 4, alpha = rank.
- demo_b.safetensors: kohya format (`lora_unet_...`, `lora_te_...`), rank 4 with alpha 2, so the
  true alpha (scale 0.5) has to survive loading.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "examples" / "models" / "loras"

# name -> write_lora_file keyword arguments. Seeds are arbitrary but fixed.
DEMO_LORAS = {
    "demo_a.safetensors": {"fmt": "diffusers", "rank": 4, "alpha": None, "seed": 101},
    "demo_b.safetensors": {"fmt": "kohya", "rank": 4, "alpha": 2, "seed": 202},
}


def write_demo_loras(out: Path) -> dict[str, Path]:
    """Write every demo LoRA into `out`; returns {name: path}."""
    from loragraph.testing import write_lora_file

    out.mkdir(parents=True, exist_ok=True)
    return {name: write_lora_file(out / name, "sd", **kwargs) for name, kwargs in DEMO_LORAS.items()}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"folder to write (default: {DEFAULT_OUT})")
    parser.add_argument("--check", action="store_true",
                        help="verify the files in --out instead of writing them")
    args = parser.parse_args(argv)

    if not args.check:
        for path in write_demo_loras(args.out).values():
            sys.stdout.write(f"wrote {path} ({path.stat().st_size:,} bytes, sha256 {_sha256(path)[:12]})\n")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = write_demo_loras(Path(tmp))
        stale = [n for n, p in fresh.items()
                 if not (args.out / n).is_file() or _sha256(p) != _sha256(args.out / n)]
    for name in DEMO_LORAS:
        sys.stdout.write(f"{name}: {'differs or missing' if name in stale else 'ok'}\n")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
