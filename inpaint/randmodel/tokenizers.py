"""Tokenizers in CLIP's and T5's formats with a small vocabulary, written without a download.

Whole-word tokens for the default prompt and common pet words, so typical prompts take about as
many tokens as with the real tokenizers (one per character would overflow the tiny T5's 32
positions and log truncation warnings on every job).
"""

from __future__ import annotations

import re
from typing import Any

from inpaint.randmodel.spec import CLIP_MAX_LENGTH, TINY_T5_MAX_LENGTH

_PET_WORDS = ["a", "an", "the", "of", "on", "in", "with", "and", "cat", "dog", "pet", "sofa"]


def vocabulary_words() -> list[str]:
    """Whole-word tokens for the default prompt and common pet words, so typical prompts take
    about as many tokens as with the real tokenizers (one per character would overflow the
    tiny T5's 32 positions and log truncation warnings on every job)."""
    from inpaint.config import DEFAULT_PROMPT

    words = re.findall(r"[a-z]+", DEFAULT_PROMPT.lower())
    words += _PET_WORDS
    return list(dict.fromkeys(words))


def clip_tokenizer() -> Any:
    """A byte-level BPE tokenizer in CLIP's format: every byte is a token, plus merges that
    build the vocabulary words left to right."""
    import inpaint.model.runtime  # noqa: F401  (first: the environment the libraries read)

    # isort: split
    from transformers import CLIPTokenizer

    chars = _byte_level_alphabet()
    vocab: dict[str, int] = {}
    for token in [*chars, *(c + "</w>" for c in chars)]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in vocabulary_words():
        pieces = [*word[:-1], word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            if (left, right) not in merges:
                merges.append((left, right))
            left += right
            vocab.setdefault(left, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_MAX_LENGTH)


def _byte_level_alphabet() -> list[str]:
    """GPT-2/CLIP's printable stand-ins for the 256 byte values (ByteLevel pre-tokenizer)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars: list[str] = []
    extra = 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def t5_tokenizer(max_length: int = TINY_T5_MAX_LENGTH) -> Any:
    """A Unigram tokenizer in T5's format (pad 0, eos 1, unk 2) over letters and digits."""
    import inpaint.model.runtime  # noqa: F401  (first: the environment the libraries read)

    # isort: split
    from transformers import T5Tokenizer

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"
    pieces += [("\u2581", -2.0)]
    pieces += [("\u2581" + c, -3.0) for c in alphabet]
    pieces += [(c, -4.0) for c in alphabet]
    pieces += [(c.upper(), -5.0) for c in alphabet if c.isalpha()]
    pieces += [("\u2581" + word, -1.0) for word in vocabulary_words() if len(word) > 1]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=max_length)
