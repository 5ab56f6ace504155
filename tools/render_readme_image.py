"""Render docs/quickstart.png, the README's picture: the quickstart without and with its LoRAs.

    python tools/render_readme_image.py [--out docs/quickstart.png]

Runs examples/workflows/quickstart.json through the executor (on the CPU in float32, so the picture
is the same on every machine), and the same workflow with the Sampler fed straight from
LoadPipeline. The images (32x32, the demo model's native size) are enlarged 8x with
nearest-neighbour so their pixels stay visible.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
SCALE = 8


def render(out: Path) -> Path:
    import numpy as np
    from loragraph import host
    from loragraph.graph import Executor, apply_overrides, load_workflow
    from loragraph.nodes import HEADLESS_NODE_CLASS_MAPPINGS
    from PIL import Image, ImageDraw

    with tempfile.TemporaryDirectory() as tmp:
        host.configure(models_dir=EXAMPLES / "models", output_dir=tmp)
        executor = Executor(HEADLESS_NODE_CLASS_MAPPINGS)
        quick = apply_overrides(load_workflow(EXAMPLES / "workflows" / "quickstart.json"),
                                ["1.device=cpu", "1.dtype=float32"])
        base = apply_overrides(quick, ["7.filename_prefix=base"])
        base["6"]["inputs"]["pipeline"] = ["1", 0]
        arrays = []
        for prompt in (base, quick):
            result = executor.execute(prompt)
            if not result.ok:
                raise SystemExit(f"quickstart failed: {result.error_lines()}")
            image = result.outputs["7"]["images"][0]
            arrays.append(np.asarray(Image.open(Path(tmp) / image["subfolder"] / image["filename"]),
                                     dtype=np.int16))

    weights = quick["4"]["inputs"]
    names = [n.strip() for n in weights["adapter_names"].split(",")]
    mix = ", ".join(f"{n} {w.strip()}" for n, w in zip(names, weights["weights"].split(","), strict=False))
    panels = [Image.fromarray(a.astype(np.uint8)) for a in arrays]
    labels = [quick["1"]["inputs"]["model"], f"+ {mix}, fused"]
    size, pad, caption = arrays[0].shape[1] * SCALE, 12, 22
    sheet = Image.new("RGB", (len(panels) * (size + pad) + pad, size + 2 * pad + caption), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (panel, label) in enumerate(zip(panels, labels, strict=True)):
        x = pad + i * (size + pad)
        sheet.paste(panel.resize((size, size), Image.NEAREST), (x, pad))
        draw.text((x, pad + size + 6), label, fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, optimize=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "quickstart.png")
    args = parser.parse_args(argv)
    sys.stdout.write(f"wrote {render(args.out)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
