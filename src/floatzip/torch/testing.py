"""Randomly initialised transformers models, built offline from their config
classes, for floatzip's tests and benchmarks (nothing is downloaded)."""
from __future__ import annotations

import os

import torch

# architecture -> (config class, model class, small config)
TINY = {
    "llama": ("LlamaConfig", "LlamaForCausalLM",
              dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM",
              dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2)),
    "mistral": ("MistralConfig", "MistralForCausalLM",
                dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, sliding_window=16)),
    "gemma": ("GemmaConfig", "GemmaForCausalLM",
              dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=1, head_dim=16)),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel",
             dict(n_embd=64, n_layer=2, n_head=4, n_positions=128)),
}

# About 1.1 billion parameters, shaped like TinyLlama-1.1B.
LLAMA_1B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
                max_position_embeddings=2048, tie_word_embeddings=False)


def random_model(arch: str, *, dtype=torch.bfloat16, tie: bool | None = None,
                 vocab_size: int = 128, seed: int = 0, **overrides):
    """A small randomly initialised causal LM of the given architecture."""
    import transformers
    config_name, model_name, base = TINY[arch]
    kwargs = dict(base, vocab_size=vocab_size, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if tie is not None:
        kwargs["tie_word_embeddings"] = tie
    kwargs.update(overrides)
    config = getattr(transformers, config_name)(**kwargs)
    torch.manual_seed(seed)
    return getattr(transformers, model_name)._from_config(config, dtype=dtype).eval()


def save_random_model(directory: str | os.PathLike, arch: str = "llama", **kwargs) -> str:
    """``random_model(...)`` saved with save_pretrained; returns the directory."""
    directory = os.fspath(directory)
    random_model(arch, **kwargs).save_pretrained(directory)
    return directory


def save_random_llama(directory: str | os.PathLike, *, dtype=torch.bfloat16, seed: int = 0,
                      max_shard_size: str = "5GB", **config) -> str:
    """A random Llama (LLAMA_1B unless config overrides it), built on the
    meta device and initialised one tensor at a time, so that making it
    costs little more memory than the weights."""
    import transformers
    directory = os.fspath(directory)
    cfg = transformers.LlamaConfig(**{**LLAMA_1B, **config})
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM._from_config(cfg, dtype=dtype)
    generator = torch.Generator().manual_seed(seed)
    std = cfg.initializer_range
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            value = torch.empty(p.shape, dtype=torch.float32)
            if name == "weight" and p.dim() == 1:      # norms
                value.fill_(1.0)
            else:
                value.normal_(0.0, std, generator=generator)
            module._parameters[name] = torch.nn.Parameter(value.to(dtype), requires_grad=False)
    model.save_pretrained(directory, max_shard_size=max_shard_size)
    return directory
