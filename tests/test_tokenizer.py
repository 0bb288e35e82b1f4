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
