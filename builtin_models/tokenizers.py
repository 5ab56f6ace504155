"""Tokenizers made in code, so the built-in pipelines need no vocabulary download.

CLIP: a byte-level BPE tokenizer with no merges (514 tokens), written to a fixed folder per user;
it still tokenizes any prompt. T5: a Unigram model over a generated vocabulary, built in memory.
"""

from __future__ import annotations

import json
import os
import string
import tempfile
from collections.abc import Iterable
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


def whole_word_bpe(
    words: Iterable[str], specials: Iterable[str],
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary and merges of a byte-level BPE (GPT-2's byte symbols): the 256 byte symbols, so any
    text tokenizes; one token per word of `words` (each spelled by a chain of merges, one byte more
    each); then `specials`. A word is what the pre-tokenizer makes a piece (" the", ",", "\\n\\n"), so a
    template made of those words tokenizes to as many tokens as on the real, larger vocabulary.
    """
    bytes_map = bytes_to_unicode()
    vocab: dict[str, int] = {}
    merges: list[tuple[str, str]] = []

    def add(token: str) -> None:
        vocab.setdefault(token, len(vocab))

    for symbol in bytes_map.values():
        add(symbol)
    for word in words:
        symbols = "".join(bytes_map[b] for b in word.encode())
        for end in range(2, len(symbols) + 1):
            if symbols[:end] not in vocab:
                merges.append((symbols[:end - 1], symbols[end - 1]))
                add(symbols[:end])
    for token in specials:
        add(token)
    return vocab, merges


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

    words = QWEN_LINE_WORDS + tuple(" " + w for w in QWEN_WORDS.split())
    vocab, merges = whole_word_bpe(words, QWEN_SPECIAL_TOKENS)
    specials = list(QWEN_SPECIAL_TOKENS[1:])  # the first is the pad/unk/eos token Qwen2Tokenizer adds itself
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, additional_special_tokens=specials)
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


def gemma_tokenizer():
    """A GemmaTokenizer (Lumina 2's and Sana's Gemma 2 encoders load one), built in memory: Gemma's
    special tokens, its 256 byte-fallback tokens `<0x00>`..`<0xFF>` (so any prompt tokenizes), then
    the word boundary `▁` and the ASCII letters and digits as tokens of their own; no merges. 324 tokens.
    """
    from transformers import GemmaTokenizer

    vocab: dict[str, int] = {}
    for token in ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>"):
        vocab[token] = len(vocab)
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for char in "\u2581" + string.ascii_letters + string.digits:
        vocab[char] = len(vocab)
    return GemmaTokenizer(vocab=vocab, merges=[], add_bos_token=True)


def glm_tokenizer():
    """The tokenizer CogView4's GLM-4 encoder loads, built in memory: a byte-level BPE over the 256 byte
    symbols (no merges, so any prompt tokenizes) with GLM's special tokens, every text starting with
    `[gMASK]<sop>` as GLM-4's does, padded on the left as CogView4's is. 261 tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {symbol: i for i, symbol in enumerate(bytes_to_unicode().values())}
    specials = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>"]
    for token in specials:
        vocab[token] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="[gMASK] <sop> $A", pair="[gMASK] <sop> $A $B",
        special_tokens=[("[gMASK]", vocab["[gMASK]"]), ("<sop>", vocab["<sop>"])],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   additional_special_tokens=specials[1:], padding_side="left")


# Llama 3's pre-tokenizer pattern (Qwen's, but digits in runs of up to three).
LLAMA3_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
LLAMA3_SPECIAL_TOKENS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                         "<|eot_id|>", "<pad>")


def llama3_tokenizer(template: str):
    """A LlamaTokenizerFast as HunyuanVideo's (Llama 3's byte-level BPE), built in memory.

    The 256 byte symbols, Llama 3's special tokens, and one token per piece Llama 3's pre-tokenizer
    makes of `template` (the pipeline's prompt template, special tokens aside): so the template
    tokenizes to as many tokens as on Llama 3's vocabulary, and the pipeline's `crop_start` (that
    count, made on the real vocabulary) cuts exactly the template's system part off. Every text starts
    with `<|begin_of_text|>`, as Llama 3's. 496 tokens with HunyuanVideo's template.
    """
    import re

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import LlamaTokenizerFast

    split = pre_tokenizers.Split(Regex(LLAMA3_PRETOKENIZE_REGEX), behavior="isolated", invert=False)
    specials = re.compile("|".join(re.escape(t) for t in LLAMA3_SPECIAL_TOKENS))
    words = [piece for text in specials.split(template) for piece, _ in split.pre_tokenize_str(text)]
    vocab, merges = whole_word_bpe(words, LLAMA3_SPECIAL_TOKENS)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    bos = LLAMA3_SPECIAL_TOKENS[0]
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                       special_tokens=[(bos, vocab[bos])])
    # Padded on the right: the pipeline crops the template off the front of the padded sequence.
    return LlamaTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token="<|eot_id|>", pad_token="<pad>",
        additional_special_tokens=list(LLAMA3_SPECIAL_TOKENS[1:4]), padding_side="right",
    )
