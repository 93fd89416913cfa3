from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoProcessor, GitConfig, GitForCausalLM

from captioner.model_factory import SHAPES, _vocabulary


def test_tiny_model_loads_through_from_pretrained(tiny_model_dir: Path) -> None:
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert type(model).__name__ == "GitForCausalLM"
    assert len(processor.tokenizer) == SHAPES["tiny"].vocab_size
    assert processor.tokenizer.cls_token_id == model.config.bos_token_id == 101
    assert processor.tokenizer.sep_token_id == model.config.eos_token_id == 102


def test_base_shape_has_git_base_parameter_count(tiny_model_dir: Path) -> None:
    """The base shape must cost what microsoft/git-base-textcaps costs: ~177 M parameters."""
    config = GitConfig.from_pretrained(tiny_model_dir)
    shape = SHAPES["base"]
    config.vocab_size, config.hidden_size = shape.vocab_size, shape.hidden_size
    config.num_hidden_layers, config.num_attention_heads = shape.layers, shape.heads
    config.intermediate_size, config.max_position_embeddings = shape.intermediate_size, 1024
    vision = config.vision_config
    vision.hidden_size, vision.num_hidden_layers = shape.vision_hidden_size, shape.vision_layers
    vision.num_attention_heads, vision.intermediate_size = shape.vision_heads, shape.vision_intermediate_size
    vision.image_size, vision.patch_size = shape.image_size, shape.patch_size
    with torch.device("meta"):
        model = GitForCausalLM(config)
    parameters = sum(p.numel() for p in model.parameters())
    assert 170e6 < parameters < 180e6, parameters


def test_vocabulary_is_unique_and_bert_shaped() -> None:
    vocabulary = _vocabulary(30522)
    assert len(vocabulary) == len(set(vocabulary)) == 30522
    assert vocabulary[0] == "[PAD]" and vocabulary[101] == "[CLS]" and vocabulary[102] == "[SEP]"
