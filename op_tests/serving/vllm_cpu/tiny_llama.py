"""A tiny random-weight Llama (about 0.2M parameters) and a word-level tokenizer, written to a directory for
vLLM to load: no download. ``python tiny_llama.py OUT_DIR``.

The weights are random but shaped so that greedy decoding depends on attention: the query and key
projections are scaled up (peaked attention: which tokens a position attends to decides its output) and the
output head too (clear top-1 margins, so the comparison is about attention, not fp16 rounding). With seed
2 the ten shared-prefix prompts of generate.py decode to varied token sequences (other seeds fell into
one repeated token, which would hide an attention error)."""

import sys

import torch

VOCAB = 512


def make(out_dir: str, seed: int = 2, qk_scale: float = 8.0, head_scale: float = 4.0) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=2048,
                         torch_dtype="float16")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(qk_scale)
            layer.self_attn.k_proj.weight.mul_(qk_scale)
    model.to(torch.float16).save_pretrained(out_dir)
    tokenizer = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="t0", bos_token="t1",
                            eos_token="t2").save_pretrained(out_dir)


if __name__ == "__main__":
    make(sys.argv[1])
