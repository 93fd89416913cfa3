"""Builds GIT model directories locally (random weights) that load like the real checkpoint.

The hub is unreachable on build machines, so tests and benchmarks make their own:
`tiny` for tests, `base` with the exact shapes and cost of microsoft/git-base-textcaps.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ModelSize = Literal["tiny", "base"]

_SPECIAL_TOKENS = ["[PAD]", *[f"[unused{i}]" for i in range(99)], "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"]


@dataclass(frozen=True)
class ModelShape:
    vocab_size: int
    hidden_size: int
    layers: int
    heads: int
    intermediate_size: int
    vision_hidden_size: int
    vision_layers: int
    vision_heads: int
    vision_intermediate_size: int
    image_size: int
    patch_size: int
    max_position_embeddings: int
    # Random weights at BERT's 0.02 give a tiny model whose output ignores the image; wider
    # weights make its titles depend on the picture, which is what tests need to tell images apart.
    initializer_range: float = 0.02


SHAPES: dict[ModelSize, ModelShape] = {
    "tiny": ModelShape(
        vocab_size=1024,
        hidden_size=32,
        layers=2,
        heads=2,
        intermediate_size=64,
        vision_hidden_size=32,
        vision_layers=2,
        vision_heads=2,
        vision_intermediate_size=64,
        image_size=32,
        patch_size=8,
        max_position_embeddings=128,
        initializer_range=0.5,
    ),
    # microsoft/git-base-textcaps: ViT-B/16 at 224, 6-layer 768-wide decoder, BERT vocabulary.
    "base": ModelShape(
        vocab_size=30522,
        hidden_size=768,
        layers=6,
        heads=12,
        intermediate_size=3072,
        vision_hidden_size=768,
        vision_layers=12,
        vision_heads=12,
        vision_intermediate_size=3072,
        image_size=224,
        patch_size=16,
        max_position_embeddings=1024,
    ),
}


def _vocabulary(size: int) -> list[str]:
    words = (
        "".join(parts)
        for length in itertools.count(1)
        for parts in itertools.product(_SYLLABLES, repeat=length)
    )
    return [*_SPECIAL_TOKENS, *itertools.islice(words, size - len(_SPECIAL_TOKENS))]


def make_model(size: ModelSize | str, out: Path, *, seed: int = 0) -> Path:
    """Write a GIT model + processor directory that `from_pretrained` loads; returns `out`."""
    import torch
    from transformers import BertTokenizer, CLIPImageProcessor, GitConfig, GitForCausalLM, GitProcessor

    shape = SHAPES[size]  # type: ignore[index]
    out.mkdir(parents=True, exist_ok=True)
    vocab = {token: index for index, token in enumerate(_vocabulary(shape.vocab_size))}
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=512)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": shape.image_size},
        crop_size={"height": shape.image_size, "width": shape.image_size},
    )
    config = GitConfig(
        vision_config={
            "hidden_size": shape.vision_hidden_size,
            "intermediate_size": shape.vision_intermediate_size,
            "num_hidden_layers": shape.vision_layers,
            "num_attention_heads": shape.vision_heads,
            "image_size": shape.image_size,
            "patch_size": shape.patch_size,
            "initializer_range": shape.initializer_range,
        },
        initializer_range=shape.initializer_range,
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        intermediate_size=shape.intermediate_size,
        max_position_embeddings=shape.max_position_embeddings,
        bos_token_id=101,
        eos_token_id=102,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    model = GitForCausalLM(config).eval()  # type: ignore[no-untyped-call]
    model.save_pretrained(out)
    processor = GitProcessor(image_processor=image_processor, tokenizer=tokenizer)  # type: ignore[no-untyped-call]
    processor.save_pretrained(out)
    (out / "CAPTIONER_RANDOM_WEIGHTS").write_text(
        f"Random-weight GIT-{size} made by `captioner model make`; its captions are noise.\n"
    )
    return out
