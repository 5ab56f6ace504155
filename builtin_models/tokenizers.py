"""Tokenizers made in code, so the built-in pipelines need no vocabulary download.

CLIP: a byte-level BPE tokenizer with no merges (514 tokens), written to a fixed folder per user;
it still tokenizes any prompt. T5: a Unigram model over a generated vocabulary, built in memory.
"""

from __future__ import annotations

import json
import os
import string
import tempfile
from functools import lru_cache
from pathlib import Path

from ..base import disk


def bytes_to_unicode() -> dict[int, str]:
    # The mapping CLIP's byte-level BPE uses (GPT-2's), copied so we depend on no private helper.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


@lru_cache(maxsize=1)
def tokenizer_folder() -> str:
    """A folder holding vocab.json and merges.txt of the byte-level tokenizer (514 tokens).

    One fixed folder per user (not a fresh temp dir per process, which would pile up); written
    whole (base/disk.py), so concurrent processes never read half a file.
    """
    chars = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    files = {"vocab.json": json.dumps(vocab), "merges.txt": "#version: 0.2\n"}
    uid = os.getuid() if hasattr(os, "getuid") else 0
    folder = Path(tempfile.gettempdir()) / f"loragraph-byte-tokenizer-{uid}"
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = folder / name
        if not path.is_file() or path.read_text() != text:
            disk.write_file(path, text.encode())
    return str(folder)


def make_tokenizer():
    from transformers import CLIPTokenizer

    folder = tokenizer_folder()
    return CLIPTokenizer(f"{folder}/vocab.json", f"{folder}/merges.txt", model_max_length=77)


def t5_tokenizer():
    """A T5TokenizerFast over lowercase letters and digits (65 tokens), built in memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + c, -1.0) for c in string.ascii_lowercase]
    vocab += [(c, -2.0) for c in string.ascii_lowercase + string.digits]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                           extra_ids=0)


# Qwen's special tokens (Qwen2/2.5-VL/3 share them): padding, the ChatML turn markers, the vision
# placeholders a Qwen-VL encoder's config points at, and Qwen3's thinking markers.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
    "<|video_pad|>", "<think>", "</think>",
)
# Words that get a token of their own: the chat roles and Qwen-Image's system prompt, which start a line
# (no space before them), then the prompt's words and a few more (a space before them, as mid-line).
# With whole-word tokens that template prefix is 34 tokens long, as on Qwen's own vocabulary, so the
# pipeline's drop index (its length in tokens) cuts exactly the system prompt off.
QWEN_LINE_WORDS = ("system", "user", "assistant", "Describe")
QWEN_WORDS = (
    "the image by detailing color shape size texture quantity text spatial relationships of objects and "
    "background a red circle on white"
)


# ChatML, as Qwen's tokenizers render it (Qwen3's thinking switch included): for pipelines that build
# their prompt with `apply_chat_template` (Z-Image).
QWEN_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)


def qwen_tokenizer():
    """A Qwen2Tokenizer (what Qwen-Image, Z-Image and the other Qwen-encoded pipelines load), built in memory.

    Byte-level BPE as Qwen's, with its pre-tokenizer: the 256 byte symbols, so any prompt tokenizes,
    plus one token per word of `QWEN_LINE_WORDS` and `QWEN_WORDS` (a chain of merges each) and the
    special tokens: 385 tokens. Its chat template is Qwen's ChatML (`QWEN_CHAT_TEMPLATE`).
    """
    from transformers import Qwen2Tokenizer

    bytes_map = bytes_to_unicode()
    vocab: dict[str, int] = {}
    merges: list[tuple[str, str]] = []

    def add(token: str) -> None:
        vocab.setdefault(token, len(vocab))

    for symbol in bytes_map.values():
        add(symbol)
    for word in QWEN_LINE_WORDS + tuple(" " + w for w in QWEN_WORDS.split()):
        symbols = "".join(bytes_map[b] for b in word.encode())
        for end in range(2, len(symbols) + 1):
            if symbols[:end] not in vocab:
                merges.append((symbols[:end - 1], symbols[end - 1]))
                add(symbols[:end])
    for token in QWEN_SPECIAL_TOKENS:
        add(token)
    specials = list(QWEN_SPECIAL_TOKENS[1:])  # the first is the pad/unk/eos token Qwen2Tokenizer adds itself
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, additional_special_tokens=specials)
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer
