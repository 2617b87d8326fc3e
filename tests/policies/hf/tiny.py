"""A tiny random Llama and a word-level tokenizer built in-test: real transformers and peft
code at a size that runs in seconds."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from engine.config.sections import HFConfig
from engine.policies.hf.loading import LoadedModel
from engine.policies.hf.policy import HFPolicy

WORDS = [
    "review", "sentiment", ":", "good", "bad", "great", "awful", "food", "room",
    "the", "was", "positive", "negative", "\n", "very", "not",
]  # fmt: skip
SPECIAL = ["<pad>", "<bos>", "<eos>", "<unk>"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(SPECIAL + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="removed")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    return fast


def tiny_model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(SPECIAL) + len(WORDS),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(cfg)
    model.eval()
    return model


def save_tiny(directory: Path, seed: int = 0) -> Path:
    """The tiny model and tokenizer as a transformers directory."""
    tiny_model(seed).save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


def tiny_policy(seed: int = 0, model_seed: int = 0, **hf: object) -> HFPolicy:
    config = HFConfig(model="tiny", max_new_tokens=6, **hf)  # type: ignore[arg-type]
    loaded = LoadedModel(tiny_model(model_seed), tiny_tokenizer(), "tiny", Path("."))
    return HFPolicy(loaded, config, seed=seed)
