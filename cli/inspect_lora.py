"""``loragraph inspect``: a LoRA file's summary, and what of it lands on a pipeline."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from .reports import EXIT_INVALID, EXIT_OK, write_json_line
from .workflows import configure_host

DEFAULT_MODEL = "builtin:tiny-sd"


def cmd_inspect(args: argparse.Namespace, out: IO[str]) -> int:
    from .. import host
    from ..loaders import store
    from ..loaders.coverage import coverage as lora_coverage
    from ..loaders.engine import get_engine
    from ..loaders.lora_file import LoraFileError
    from ..loaders.pipelines import quiet_loading

    path = Path(args.lora)
    # A file given by its path needs no models folder (the default --model is built in).
    configure_host(args,
                   needs_models=not path.is_file() or not (args.model or "builtin:").startswith("builtin:"))
    if not path.is_file():
        try:
            path = host.resolve_in("loras", args.lora)
        except (ValueError, FileNotFoundError):
            sys.stderr.write(f"loragraph inspect: {args.lora}: no such file "
                             f"(nor in {args.models_dir}/loras)\n")
            return EXIT_INVALID
    try:
        lora = store.read_lora(path)
    except LoraFileError as ex:
        sys.stderr.write(f"loragraph inspect: {ex}\n")
        return EXIT_INVALID
    summary = lora.summary()
    # The algorithm per module; with no --model, the built-in models the file fits (a file trained on
    # a tiny built-in model matches no real base model's shapes).
    from ..loaders import fit

    summary["module_algorithms"] = fit.module_algorithms(lora)
    model = args.model
    if model is None:
        with quiet_loading():  # no "Loading pipeline components" bars in a report
            summary.update(fit.family_fit(lora, summary.get("base_model")))  # as the editor's summary
        model = summary["fits"][0] if summary["fits"] else DEFAULT_MODEL

    coverage: dict[str, Any] | None = None
    coverage_text = ""
    if model:
        engine = get_engine()
        try:
            pipe = fit.built(model) if args.model is None else None  # the guess built it already
            if pipe is None:
                with quiet_loading():  # no "Loading pipeline components" bars in a report
                    handle = engine.load_pipeline(model)
                pipe = engine.live(handle.source).pipe
        except Exception as ex:  # any reason the model cannot be built is a usage error here
            sys.stderr.write(f"loragraph inspect: --model {model}: {ex}\n")
            return EXIT_INVALID
        try:
            cov = lora_coverage(pipe, lora)
            coverage = {**cov.to_dict(), "model": model, "loadable": cov.loadable, "message": cov.message()}
            coverage_text = cov.message()
            if cov.complete:
                # every module lands (after the pipeline's own converters): the file is that family's
                summary["family"] = cov.pipeline
                if summary.get("base_model") == "other" and model.startswith("builtin:"):
                    # the same answer as without --model: a file for a built-in model names it
                    summary["base_model"] = model
                    summary["base_model_reason"] = f"all {len(lora.modules)} modules land on it"
        except LoraFileError as ex:
            coverage = {"model": model, "loadable": False, "message": str(ex)}
            coverage_text = str(ex)

    if args.json:
        write_json_line(out, {"summary": summary, "coverage": coverage})
        return EXIT_OK
    out.write(_format_summary(summary))
    if coverage is not None:
        out.write(f"coverage on {model}:\n  {coverage_text}\n")
    out.flush()
    return EXIT_OK


def _format_summary(summary: Mapping[str, Any]) -> str:
    def fmt(value: Any) -> str:
        if isinstance(value, (list, tuple)):
            return ", ".join(fmt(v) for v in value) or "-"
        if isinstance(value, Mapping):
            return ", ".join(f"{k} {fmt(v)}" for k, v in value.items()) or "-"
        return "-" if value is None or value == "" else str(value)

    rows = [
        ("file", summary.get("path")),
        ("title", summary.get("title")),
        ("format", summary.get("format")),
        ("size", f"{summary.get('size', 0):,} bytes"),
        ("sha256", summary.get("sha256")),
        ("short hash", summary.get("short_hash")),
        ("modules", summary.get("modules")),
        ("per component", summary.get("components")),
        ("algorithms", summary.get("algorithms")),
        ("ranks", summary.get("ranks")),
        ("alphas", f"{fmt(summary.get('effective_alphas') or [])}"
                   + ("" if summary.get("alpha_in_file", True) or not summary.get("effective_alphas")
                      else " (= rank: the file stores none)")),
        ("base model", f"{summary.get('base_model')} ({summary.get('base_model_reason')})"),
        *([("fits", summary["fits"])] if "fits" in summary else []),
        *([("family", summary["family"])] if "family" in summary else []),
        ("trigger words", summary.get("trigger_words")),
        ("training", summary.get("training")),
        ("non-finite", summary.get("nonfinite_keys")),
    ]
    return "".join(f"{name + ':':<15}{fmt(value)}\n" for name, value in rows)
