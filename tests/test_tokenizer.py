"""Our runtime tokenizer (tokenizers library, no torch) against transformers' CLIPTokenizer."""

from __future__ import annotations

import numpy as np
import pytest

from outpaint.engine.tokenizer import ClipTokenizer

PROMPTS = [
    "streets in italy",
    "",
    "A  PHOTO of a Café, 4k!!  (masterpiece:1.2) <lora> émigré",
    "castle " * 100,
]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_ids_match_transformers_clip_tokenizer(tiny_model_dir, tiny_components, prompt):
    from transformers import CLIPTokenizer

    reference = CLIPTokenizer.from_pretrained(str(tiny_components.tokenizer_dir))
    expected = reference(prompt, padding="max_length", max_length=77, truncation=True).input_ids
    tokens = ClipTokenizer(tiny_model_dir / "tokenizer")(prompt)
    assert tokens.ids.dtype == np.int64 and tokens.ids.shape == (77,)
    assert tokens.ids.tolist() == expected
    assert tokens.truncated == (prompt.startswith("castle"))


def test_real_clip_vocabulary_ids(tiny_model_dir):
    ids = ClipTokenizer(tiny_model_dir / "tokenizer")("a photo of a cat").ids
    assert ids[:7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]


# -- text bounded before tokenizing (issue 11) ---------------------------------------------------


def _full_text_ids(folder, text: str) -> list[int]:
    """What tokenizing the whole text gives (the reference the cut must reproduce)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    ids = tokenizer.encode(text).ids
    if len(ids) > 77:
        ids = [*ids[:76], ids[-1]]
    return ids + [ids[-1]] * (77 - len(ids))  # CLIP pads with its EOS token


def test_long_text_is_cut_before_tokenizing_and_gives_the_same_ids(tiny_model_dir):
    tokenizer = ClipTokenizer(tiny_model_dir / "tokenizer")
    assert tokenizer.max_chars == 4 * 77 * 33  # CLIP's longest token: 32 bytes (eight 4-byte emoji)
    rng = np.random.default_rng(0)
    pieces = ["a", "castle", "é", "😂", "ﬁ", "İ", "e\u0301", "\u1100\u1161\u11a8", "!!", "4k", "\x1c", "\u2000",
              "\n", "\t\t", "  ", "\u3000", "\x00"]
    texts = [
        "".join(pieces[i] for i in rng.integers(0, len(pieces), 20_000)),  # mixed scripts, marks, whitespace
        "x" * 50_000 + " castle",  # one word longer than the cap
        "😂" * 20_000,  # the longest tokens there are
        " " * 50_000 + "lighthouse " * 3 + "\n" * 50_000 + "dog",  # padding: short once collapsed, not cut
        "castle, " * 5_000,
    ]
    for text in texts:
        tokens = tokenizer(text)
        assert tokens.ids.tolist() == _full_text_ids(tiny_model_dir / "tokenizer", text), text[:40]
        assert tokens.truncated == (text[-3:] != "dog")
        assert (tokens.chars_read is None) == (text[-3:] == "dog")


def test_a_15_mb_prompt_takes_a_fraction_of_a_second(tiny_model_dir):
    """It took 69 s and 3.7 GB, to keep 77 tokens (memory: tests/test_input_limits.py)."""
    import time

    tokenizer = ClipTokenizer(tiny_model_dir / "tokenizer")
    for text in ("castle " * (15_000_000 // 7), "😂" * 3_750_000, " " * 15_000_000 + "dog"):
        started = time.perf_counter()
        tokens = tokenizer(text)
        assert time.perf_counter() - started < 3
        assert tokens.ids.shape == (77,)
