"""Run examples/workflows/demo_grid.json and tile its images into docs/demo_grid.png (for docs/demo-model.md).

    python tools/make_grid.py                    # run the workflow, write docs/demo_grid.png
    python tools/make_grid.py --write-workflow   # regenerate the workflow file first

The workflow loads `builtin:shapes`, then for each demo LoRA (examples/models/loras/shapes/) one
LoadLoRA at strength 1 and three SetAdapterWeights branches (0, 0.5, 1) off it, each into a
Sampler -> SaveImage, for a few prompts; plus the base image without any LoRA. Rows are prompts,
columns are base, then each LoRA at 0 / 0.5 / 1. Cells are upscaled nearest-neighbour (32 px is
the model's native size).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / "examples" / "workflows" / "demo_grid.json"
MODELS = REPO / "examples" / "models"
OUT = REPO / "docs" / "demo_grid.png"

PROMPTS = (
    ("a red circle on a white background", 1),
    ("a blue triangle on a black background", 2),
    ("a yellow square on a gray background", 3),
)
LORAS = ("palette", "outline", "texture")
WEIGHTS = ("0", "0.5", "1")
PREFIX = "demo_grid"
SIZE = 32
SCALE = 4


def columns() -> list[tuple[str, str | None, str | None]]:
    """(label, lora, weight) per column; the first is the base pipeline."""
    return [("base", None, None)] + [(f"{lora} {w}", lora, w) for lora in LORAS for w in WEIGHTS]


def build_workflow() -> dict:
    """The API-format workflow: node ids are plain counters, in the order they are made."""
    nodes: dict[str, dict] = {}

    def add(class_type: str, inputs: dict) -> str:
        node_id = str(len(nodes) + 1)
        nodes[node_id] = {"inputs": inputs, "class_type": class_type, "_meta": {"title": class_type}}
        return node_id

    pipe = add("LoadPipeline", {"model": "builtin:shapes", "dtype": "auto", "device": "auto"})
    branches: list[str] = [pipe]
    for lora in LORAS:
        loaded = add("LoadLoRA", {"pipeline": [pipe, 0], "lora_name": f"shapes/{lora}.safetensors",
                                  "strength": 1.0, "adapter_name": lora})
        for w in WEIGHTS:
            branches.append(add("SetAdapterWeights", {"pipeline": [loaded, 0], "adapter_names": lora,
                                                      "weights": w, "text_encoder_weights": "",
                                                      "block_weights": ""}))
    for row, (prompt, seed) in enumerate(PROMPTS):
        for col, branch in enumerate(branches):
            image = add("Sampler", {"pipeline": [branch, 0], "prompt": prompt, "negative_prompt": "",
                                    "seed": seed, "steps": 20, "cfg": 7.0, "width": SIZE, "height": SIZE,
                                    "scheduler": "default", "batch_size": 1})
            add("SaveImage", {"images": [image, 0], "filename_prefix": f"{PREFIX}_r{row}_c{col}"})
    return nodes


def run_workflow(output_dir: Path) -> None:
    from loragraph.cli import main as cli

    code = cli(["run", str(WORKFLOW), "--models-dir", str(MODELS), "--output-dir", str(output_dir), "--json"])
    if code != 0:
        raise SystemExit(f"the workflow failed (exit status {code})")


def tile(output_dir: Path, out: Path) -> None:
    from PIL import Image, ImageDraw

    cols = columns()
    cell, pad, header = SIZE * SCALE, 6, 18
    found: dict[tuple[int, int], Path] = {}
    for path in output_dir.rglob(f"{PREFIX}_r*_c*_*.png"):
        m = re.match(rf"{PREFIX}_r(\d+)_c(\d+)_", path.name)
        if m:
            found[(int(m.group(1)), int(m.group(2)))] = path
    missing = [(r, c) for r in range(len(PROMPTS)) for c in range(len(cols)) if (r, c) not in found]
    if missing:
        raise SystemExit(f"images missing for (row, column): {missing}")
    width = len(cols) * (cell + pad) + pad
    height = header + len(PROMPTS) * (cell + pad) + pad
    grid = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for c, (label, _, _) in enumerate(cols):
        draw.text((pad + c * (cell + pad) + 2, 4), label, fill=(0, 0, 0))
    for (r, c), path in sorted(found.items()):
        img = Image.open(path).convert("RGB").resize((cell, cell), Image.NEAREST)
        grid.paste(img, (pad + c * (cell + pad), header + pad + r * (cell + pad)))
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-workflow", action="store_true", help=f"regenerate {WORKFLOW.name} first")
    parser.add_argument("--out", type=Path, default=OUT, help="the PNG to write (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.write_workflow:
        WORKFLOW.write_text(json.dumps(build_workflow(), indent=2) + "\n")
        sys.stdout.write(f"wrote {WORKFLOW}\n")
    with tempfile.TemporaryDirectory() as tmp:
        run_workflow(Path(tmp))
        tile(Path(tmp), args.out)
    sys.stdout.write(f"wrote {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
