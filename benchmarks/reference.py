"""Fallback copies of ../shared/bench/make_models.py and floor.py, used by run.py only when the
shared scripts are not beside the clone. Same logic, same seeds, same output layout.

    python benchmarks/reference.py make OUT --hidden 1024 --layers 8 --inter 2816 --vocab 32000 --n 3
    python benchmarks/reference.py floor OUT MODEL [MODEL ...]

``make`` needs torch, transformers and tokenizers; ``floor`` needs torch and safetensors.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys


def make(argv: list[str]) -> None:
    """A random Llama-style base and N fine-tunes (base plus a small random task vector)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    p = argparse.ArgumentParser(prog="reference.py make")
    p.add_argument("out")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--inter", type=int, default=1376)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--n", type=int, default=3)
    p.add_argument("--shard", default="200MB")
    p.add_argument("--dtype", default="bfloat16")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    dtype = getattr(torch, a.dtype)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    corpus = [f"the quick brown fox jumps over the lazy dog {i}" for i in range(2000)]
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(vocab_size=min(a.vocab, 1000), special_tokens=["<unk>", "<s>", "</s>"]),
    )
    ftok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    cfg = LlamaConfig(
        hidden_size=a.hidden,
        num_hidden_layers=a.layers,
        intermediate_size=a.inter,
        num_attention_heads=max(1, a.hidden // 64),
        num_key_value_heads=max(1, a.hidden // 256),
        vocab_size=a.vocab,
        tie_word_embeddings=False,
        max_position_embeddings=2048,
    )
    model = LlamaForCausalLM(cfg).to(dtype)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    model.save_pretrained(os.path.join(a.out, "base"), max_shard_size=a.shard)
    ftok.save_pretrained(os.path.join(a.out, "base"))
    for i in range(1, a.n + 1):
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for k, v in model.state_dict().items():
                # The scale comes from the current values (the previous fine-tune's), as in
                # the shared script, so both produce the same bytes.
                scale = v.float().std() * 0.05 + 1e-4
                delta = torch.randn(v.shape, generator=g, dtype=torch.float32) * scale
                v.copy_((original[k].float() + delta).to(dtype))
        folder = os.path.join(a.out, f"ft{i}")
        model.save_pretrained(folder, max_shard_size=a.shard)
        ftok.save_pretrained(folder)
    n = sum(v.numel() for v in original.values())
    print(json.dumps({"params": n, "bytes_per_model": n * torch.finfo(dtype).bits // 8}))


def floor(argv: list[str]) -> None:
    """Read every tensor of every model once, average in float32, write bf16 shards of ~1 GiB."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    out, folders = argv[0], argv[1:]
    os.makedirs(out, exist_ok=True)
    handles = []
    for folder in folders:
        by_name = {}
        for f in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
            h = safe_open(f, "pt")
            for k in h.keys():
                by_name[k] = h
        handles.append(by_name)
    weight = 1.0 / len(folders)
    shard: dict[str, torch.Tensor] = {}
    size = idx = 0
    for name in sorted(handles[0]):
        acc = None
        for by_name in handles:
            t = by_name[name].get_tensor(name).float()
            acc = t * weight if acc is None else acc.add_(t, alpha=weight)
        assert acc is not None
        shard[name] = acc.to(torch.bfloat16)
        size += shard[name].numel() * 2
        if size > 1 << 30:
            save_file(shard, os.path.join(out, f"s{idx}.safetensors"))
            shard, size, idx = {}, 0, idx + 1
    if shard:
        save_file(shard, os.path.join(out, f"s{idx}.safetensors"))


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("make", "floor"):
        sys.exit(__doc__)
    (make if sys.argv[1] == "make" else floor)(sys.argv[2:])
