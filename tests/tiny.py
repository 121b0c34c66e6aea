"""A tiny random-weight Llama with a real byte-level BPE tokenizer and a ChatML template.

Built from a config in about a second, so unit tests exercise the real code paths (chat
template, masks, peft, accelerate) without the bundled model.
"""

from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "The card has not arrived yet. Where is my card?",
    "Classify the text into exactly one of these labels: card_arrival, exchange_rate.",
    "What is the exchange rate today? Answer with the label only.",
    "hello world, how are you doing? fine thanks, and you?",
    "positive negative neutral yes no maybe",
] * 20


def build_tiny_model(path: Path, vocab_size: int = 384, hidden: int = 64, layers: int = 2,
                     init_std: float = 0.02) -> Path:
    """Write a tokenizer and a seeded random LlamaForCausalLM into `path`.

    `init_std` is the weights' initial scale. With the library default (0.02) the tied
    embeddings are so small that the logits barely move under LoRA; 0.2 makes a model that
    LoRA teaches the two-label task of `conftest.write_classification_project` in about 20
    steps, for tests that need a fine-tune to be measurably better than its base.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(CORPUS, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|im_start|>",
                                  eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  unk_token="<|endoftext|>")
    tok.chat_template = CHATML
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=1024, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True, initializer_range=init_std)
    model = LlamaForCausalLM(cfg)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def fit_tiny_model(src: Path, dst: Path, texts: list[str], steps: int = 40, lr: float = 1e-2,
                   seed: int = 0) -> Path:
    """Full fine-tune of the model in `src` on `texts` (plain next-token loss), saved to `dst`:
    a candidate that is better on those texts than `src` for a known reason."""
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    rng = random.Random(seed)
    model.train()
    for _ in range(steps):
        batch = tok(rng.sample(texts, min(8, len(texts))), return_tensors="pt", padding=True)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        model(**batch, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    model.save_pretrained(dst)
    tok.save_pretrained(dst)
    return dst
