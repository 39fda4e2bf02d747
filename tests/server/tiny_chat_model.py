"""A tiny random Llama with a real byte-level BPE tokenizer and a chat template, saved as a HF
folder: the server's tests run the whole stack (export, KV cache, sampler, HTTP) in milliseconds
per step, without a download.

The tokenizer is trained here on a fixed text, so it is the same on every run; its vocabulary
(320 tokens: 256 bytes, 3 specials, 61 merges) is the model's.
"""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 320
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CORPUS = ["What is the capital of France? The capital of France is Paris.",
          '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}',
          "the quick brown fox jumps over the lazy dog; hello world, how are you today?"] * 4


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", bos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tiny_chat_model(directory: str | Path, seed: int = 0) -> Path:
    from transformers import AutoModelForCausalLM, LlamaConfig

    directory = Path(directory)
    tok = build_tokenizer()
    assert len(tok) <= VOCAB
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval().save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory
