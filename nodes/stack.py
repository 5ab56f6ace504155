"""LoRAStack and PromptLoRAs: many LoRAs in one node, from lines of text or from a prompt's tags.

Both are, by definition, a chain of LoadLoRA (adapter name = the file's stem, made unique with `_2`,
`_3`, ... in order) followed by one SetAdapterWeights naming those adapters with the lines' strengths
and text-encoder strengths; they build exactly that chain of handles, so the engine does the same
work and draws the same image as the chain (docs/CONTRACT.md, "LoRAStack and PromptLoRAs").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..base import limits
from ..base.errors import NodeInputError
from ..loaders import transitions
from ..loaders.state import PipelineHandle
from . import stack_text
from .common import CATEGORY, PIPELINE, NodeResult, engine, origin_of
from .stack_text import StackLine

STACK_EXAMPLE = "styles/ink.safetensors:0.8\n# detail.safetensors:0.5  (off)\nlight.safetensors:1.0:0.5"


def _files() -> list[str]:
    from .. import host

    return host.list_loras()


def apply_lines(
    handle: PipelineHandle, lines: Sequence[StackLine], input_name: str, origin: str = ""
) -> tuple[PipelineHandle, str]:
    """The stack's handle (the LoadLoRA chain, then SetAdapterWeights) and its trigger words."""
    from ..loaders import store
    from ..loaders.trigger_words import trigger_words

    if not lines:
        return handle, ""  # nothing enabled: the pipeline as it came
    new, names, words = handle, [], []
    for line in lines:
        try:
            spec = engine().lora_spec(new, line.lora_name, line.strength, "", origin)
            new = transitions.add_adapter(new, spec)
        except NodeInputError as e:
            raise NodeInputError(input_name, f"{line.where}: {e.bare_message}") from None
        names.append(spec.name)
        words += trigger_words(spec.path, store.read_lora(spec.path).metadata)
    new = transitions.set_weights(
        new, names, [line.strength for line in lines], [line.text_encoder_strength for line in lines]
    )
    return new, ", ".join(dict.fromkeys(words))


def preflight_lines(handle: PipelineHandle | None, lines: Sequence[StackLine], input_name: str,
                    origin: str = "") -> PipelineHandle | None:
    """The stack's stand-in handle from the files' headers alone (loaders/preflight.py): the same
    chain as apply_lines, so a bad file or a family mismatch is refused before anything loads."""
    from ..loaders import preflight

    if not lines or handle is None:
        for line in lines:  # still read each header: a text file named .safetensors is caught here too
            try:
                preflight.lora_spec(None, line.lora_name, line.strength, "", "auto", origin)
            except NodeInputError as e:
                raise NodeInputError(input_name, f"{line.where}: {e.bare_message}") from None
        return handle
    new, names = handle, []
    for line in lines:
        try:
            spec = preflight.lora_spec(new, line.lora_name, line.strength, "", "auto", origin)
        except NodeInputError as e:
            raise NodeInputError(input_name, f"{line.where}: {e.bare_message}") from None
        new = transitions.add_adapter(new, spec)
        names.append(spec.name)
    return transitions.set_weights(
        new, names, [line.strength for line in lines], [line.text_encoder_strength for line in lines]
    )


def _realized(handle: PipelineHandle, *more: Any) -> NodeResult:
    _, warnings = engine().realize(handle)
    result = (handle, *more)
    return {"ui": {"text": warnings}, "result": result} if warnings else result


def _files_hash(lines: Sequence[StackLine]) -> str:
    # The files' content enters the cache key: a LoRA rewritten on disk is loaded again.
    from .. import host
    from ..loaders import store

    return ",".join(store.file_sha256(host.resolve_in("loras", line.lora_name)) for line in lines)


class LoRAStack:
    DESCRIPTION = (
        "Load several LoRAs at once, one per line: lora_name[:strength[:text_encoder_strength]]; a line "
        "starting with # is off. The same as a LoadLoRA per line followed by one SetAdapterWeights."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = (PIPELINE, "STRING")
    RETURN_NAMES = ("pipeline", "trigger_words")
    OUTPUT_TOOLTIPS = ("The pipeline with the enabled LoRAs loaded and active at their strengths.",
                       "The enabled LoRAs' trigger words, joined by ', '.")
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "pipeline": (PIPELINE, {"tooltip": "The pipeline to add the LoRAs to."}),
                "loras": (
                    "STRING",
                    {
                        "default": "",
                        "multiline": True,
                        "tooltip": "One LoRA per line, lora_name[:strength[:text_encoder_strength]] "
                        "(strength 1.0; text encoder: as strength); # turns a line off. E.g.\n"
                        + STACK_EXAMPLE,
                    },
                ),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, loras: Any = None) -> bool | str:
        if loras is None:  # linked: checked when the node runs
            return True
        try:
            stack_text.parse_stack(str(loras), _files())
        except NodeInputError as e:
            return str(e)
        return True

    @classmethod
    def IS_CHANGED(cls, loras: str = "", **_: Any) -> str:
        try:
            return _files_hash(stack_text.parse_stack(loras, _files()))
        except Exception:  # validation reports the bad line; the cache key just must not crash
            return ""

    @classmethod
    def PREFLIGHT(cls, pipeline: PipelineHandle | None, loras: str = "",
                  unique_id: Any = None) -> tuple[Any, ...]:
        lines = stack_text.parse_stack(str(loras), _files())
        return (preflight_lines(pipeline, lines, "loras", origin_of("LoRAStack", unique_id)), None)

    def run(self, pipeline: PipelineHandle, loras: str, unique_id: Any = None) -> NodeResult:
        lines = stack_text.parse_stack(loras, _files())
        new, words = apply_lines(pipeline, lines, "loras", origin_of("LoRAStack", unique_id))
        return _realized(new, words)


class PromptLoRAs:
    DESCRIPTION = (
        "Load the LoRAs that a prompt names with A1111's <lora:name:weight> tags (<lyco:...> too) and "
        "return the prompt without them. The same as LoRAStack of the tags in order."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = (PIPELINE, "STRING", "STRING")
    RETURN_NAMES = ("pipeline", "text", "trigger_words")
    OUTPUT_TOOLTIPS = ("The pipeline with the tagged LoRAs loaded and active at their weights.",
                       "The prompt without its tags: feed it to the Sampler's prompt.",
                       "The tagged LoRAs' trigger words, joined by ', '.")
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "pipeline": (PIPELINE, {"tooltip": "The pipeline to add the LoRAs to."}),
                "text": (
                    "STRING",
                    {
                        "default": "",
                        "multiline": True,
                        "tooltip": "A prompt with <lora:NAME:W> or <lora:NAME:W:TE_W> tags; NAME is a path "
                        "under loras/ without extension, or a bare file stem.",
                    },
                ),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, text: Any = None) -> bool | str:
        if text is None:
            return True
        if (too_long := limits.check_prompt_length(text, "text")) is not None:
            return too_long
        try:
            stack_text.parse_tags(str(text), _files())
        except NodeInputError as e:
            return str(e)
        return True

    @classmethod
    def IS_CHANGED(cls, text: str = "", **_: Any) -> str:
        try:
            return _files_hash(stack_text.parse_tags(text, _files()))
        except Exception:
            return ""

    @classmethod
    def PREFLIGHT(cls, pipeline: PipelineHandle | None, text: str = "",
                  unique_id: Any = None) -> tuple[Any, ...]:
        lines = stack_text.parse_tags(str(text), _files())
        new = preflight_lines(pipeline, lines, "text", origin_of("PromptLoRAs", unique_id))
        return (new, stack_text.strip_tags(str(text)), None)

    def run(self, pipeline: PipelineHandle, text: str, unique_id: Any = None) -> NodeResult:
        if (too_long := limits.check_prompt_length(text, "text")) is not None:
            raise NodeInputError("text", too_long.removeprefix("text "))
        lines = stack_text.parse_tags(text, _files())
        new, words = apply_lines(pipeline, lines, "text", origin_of("PromptLoRAs", unique_id))
        return _realized(new, stack_text.strip_tags(text), words)
