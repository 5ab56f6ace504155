"""Render docs/schedule_demo.png and measure what a schedule changes on the demo model.

    python tools/render_schedule_demo.py [--out docs/schedule_demo.png] [--measure]

The picture: examples/workflows/schedule_outline.json through the executor (CPU, float32): the base
image, `outline` at a constant strength 1, and `outline` scheduled off after 40% of the steps
(keyframes "0:1.0, 0.4:0.0", hold). Enlarged 8x, nearest-neighbour.

`--measure` prints, as JSON, the demo's own measures (loaders/demo.py) over its 20 acceptance
prompt x seed pairs (20 steps, CFG 7) for the same three settings: in how many images a shape stands
out at all, the mean fill ratio of those (outline's property), how many shapes and dominant colours
are recognised, and the mean pixel distance of the scheduled images from the constant-strength and
from the base ones.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
WORKFLOW = EXAMPLES / "workflows" / "schedule_outline.json"
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
        prompt = apply_overrides(load_workflow(WORKFLOW), ["1.device=cpu", "1.dtype=float32"])
        base = apply_overrides(prompt, ["5.filename_prefix=base"])
        base["4"]["inputs"]["pipeline"] = ["1", 0]
        arrays = []
        for wf, nodes in ((base, ("5",)), (prompt, ("5", "7"))):
            result = executor.execute(wf)
            if not result.ok:
                raise SystemExit(f"{WORKFLOW.name} failed: {result.error_lines()}")
            for node in nodes:
                image = result.outputs[node]["images"][0]
                path = Path(tmp) / image["subfolder"] / image["filename"]
                arrays.append(np.asarray(Image.open(path), dtype=np.uint8))

    keyframes = prompt["3"]["inputs"]["keyframes"]
    labels = ["builtin:shapes", "+ outline 1.0", f"+ outline {keyframes} (hold)"]
    size, pad, caption = arrays[0].shape[1] * SCALE, 12, 22
    width = len(arrays) * (size + pad) + pad
    sheet = Image.new("RGB", (width, size + 2 * pad + caption), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (array, label) in enumerate(zip(arrays, labels, strict=True)):
        x = pad + i * (size + pad)
        sheet.paste(Image.fromarray(array).resize((size, size), Image.NEAREST), (x, pad))
        draw.text((x, pad + size + 6), label, fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, optimize=True)
    return out


def measure() -> dict:
    import numpy as np
    from loragraph import host
    from loragraph.builtin_models import demo
    from loragraph.loaders import transitions as tr
    from loragraph.loaders.engine import Engine
    from loragraph.nodes import widget_text as wt

    host.configure(models_dir=EXAMPLES / "models", output_dir=tempfile.mkdtemp())
    engine = Engine()
    base = engine.load_pipeline("builtin:shapes", "float32", "cpu")
    constant = tr.add_adapter(base, engine.lora_spec(base, "shapes/outline.safetensors", 1.0, "outline"))
    keyframes = json.loads(WORKFLOW.read_text())["3"]["inputs"]["keyframes"]
    scheduled = wt.schedule_weights(constant, "outline", keyframes, "hold")
    settings = {"base": base, "outline 1.0": constant, f"outline {keyframes} (hold)": scheduled}
    images: dict[str, list] = {}
    for name, handle in settings.items():
        images[name] = [
            engine.sample(handle, demo.caption(c, s, b), "", seed, 20, 7.0, demo.NATIVE_SIZE,
                          demo.NATIVE_SIZE)[0].numpy()
            for c, s, b, seed in demo.EVAL_CASES
        ]
    report = {}
    for name, imgs in images.items():
        found = [i for i in imgs if demo.dominant_colour(i) is not None]  # a shape stands out at all
        report[name] = {
            "cases": len(imgs),
            "shape_found": len(found),
            "fill_ratio_where_found": round(float(np.mean([demo.fill_ratio(i) for i in found])), 3),
            "shape_ok": sum(demo.classify_shape(i) == case[1]
                            for i, case in zip(imgs, demo.EVAL_CASES, strict=True)),
            "colour_ok": sum(demo.dominant_colour(i) == case[0]
                             for i, case in zip(imgs, demo.EVAL_CASES, strict=True)),
        }
    names = list(images)
    sched = images[names[2]]
    report["scheduled: mean |pixel| distance (0..255)"] = {
        other: round(float(np.mean([np.abs(a - b).mean()
                                    for a, b in zip(sched, images[other], strict=True)])) * 255, 2)
        for other in names[:2]
    }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "schedule_demo.png")
    parser.add_argument("--measure", action="store_true", help="print the demo's measures as JSON")
    args = parser.parse_args(argv)
    print(render(args.out))
    if args.measure:
        print(json.dumps(measure(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
