"""Tests for :mod:`meldkit.testing`, the tiny-checkpoint factory.

The factory must not depend on transformers, but its output must be indistinguishable from what
transformers writes, so these tests use transformers (when installed) as the oracle: the
tensor names/shapes are compared with a real ``save_pretrained`` of the model class built from
our ``config.json``, the folders are loaded with ``from_pretrained`` and run, and configs are
round-tripped through ``AutoConfig``.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from meldkit.testing import (
    ARCHS,
    TRANSFORMERS_LAYOUT_VERSION,
    expected_tensor_shapes,
    make_header_only_model,
    make_model_family,
    make_tiny_model,
    read_model,
    write_tiny_tokenizer,
)

ALL_ARCHS = sorted(ARCHS)
# (arch, extra make_tiny_model kwargs): every arch with its defaults, plus the layouts that
# differ from the defaults (fused MoE names, non-default tying).
VARIANTS: list[tuple[str, dict[str, Any]]] = [(a, {}) for a in ALL_ARCHS] + [
    ("mixtral", {"legacy_moe_names": False}),
    ("llama", {"tie_embeddings": True}),
    ("gemma2", {"tie_embeddings": False}),
    ("gpt_neox", {"tie_embeddings": True}),
]
VARIANT_IDS = [a + "".join(f"-{k}={v}" for k, v in kw.items()) for a, kw in VARIANTS]


def _shapes_on_disk(folder: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a folder's safetensors files, without loading data."""
    out: dict[str, tuple[int, ...]] = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                assert k not in out, f"{k} stored twice"
                out[k] = tuple(st.get_slice(k).get_shape())
    return out


def _index(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "model.safetensors.index.json").read_text())


# ---------------------------------------------------------------------------------------------
# Checks that need transformers as the oracle
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tf() -> Any:
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


@pytest.mark.parametrize(("arch", "kw"), VARIANTS, ids=VARIANT_IDS)
def test_tensor_names_and_shapes_match_transformers(
    tf: Any, tmp_path: Path, arch: str, kw: dict[str, Any]
) -> None:
    ours = make_tiny_model(tmp_path / "ours", arch, with_tokenizer=False, **kw)
    config = tf.AutoConfig.from_pretrained(ours)
    model = tf.AutoModelForCausalLM.from_config(config)
    assert type(model).__name__ == ARCHS[arch].architecture
    # save_pretrained is the ground truth for "what a checkpoint of this model holds": it drops
    # tied keys and (by default) reverts v5's runtime renames/fusions to the original layout.
    fused = kw.get("legacy_moe_names") is False
    model.save_pretrained(tmp_path / "ref", save_original_format=not fused)
    reference = _shapes_on_disk(tmp_path / "ref")
    written = _shapes_on_disk(ours)
    assert written == reference
    assert written == expected_tensor_shapes(arch, **kw)
    # And the in-memory state dict agrees once tied (not saved) parameters are left out.
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        for tied in model._tied_weights_keys or {}:
            state.pop(tied, None)
    if arch not in ("mixtral", "gpt_neox") or fused:
        assert written == state


@pytest.mark.parametrize(("arch", "kw"), VARIANTS, ids=VARIANT_IDS)
def test_loads_in_transformers_and_runs(
    tf: Any, tmp_path: Path, arch: str, kw: dict[str, Any]
) -> None:
    path = make_tiny_model(tmp_path / "m", arch, seed=3, **kw)
    model, info = tf.AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"]
    assert not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    tok = tf.AutoTokenizer.from_pretrained(path)
    assert len(tok) == 64
    ids = torch.tensor([tok.convert_tokens_to_ids(["tok_5", "tok_7", "tok_11", "<s>"])])
    assert ids.tolist() == [[5, 7, 11, 1]]
    if arch == "qwen2":
        # v5 forces Qwen2Tokenizer for model_type qwen2: it keeps our vocab and special/added
        # tokens but substitutes its byte-level pipeline, so plain words do not encode whole.
        assert type(tok).__name__ == "Qwen2Tokenizer"
        assert tok("<s></s>")["input_ids"] == [1, 2]
    else:
        assert tok("tok_5 tok_7 tok_11 <s>")["input_ids"] == ids.tolist()[0]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, 4, 64)
    assert torch.isfinite(logits).all()
    # The values transformers loaded are ours (checked where names are not remapped).
    loaded = model.state_dict()
    for name, value in read_model(path).items():
        if name in loaded:
            assert torch.equal(loaded[name], value), name


def test_moe_layouts_hold_the_same_numbers(tf: Any, tmp_path: Path) -> None:
    legacy = make_tiny_model(tmp_path / "legacy", "mixtral", with_tokenizer=False)
    fused = make_tiny_model(
        tmp_path / "fused", "mixtral", with_tokenizer=False, legacy_moe_names=False
    )
    assert any(".block_sparse_moe.experts.3.w2.weight" in k for k in read_model(legacy))
    fused_tensors = read_model(fused)
    assert fused_tensors["model.layers.1.mlp.experts.gate_up_proj"].shape == (4, 64, 16)
    a = tf.AutoModelForCausalLM.from_pretrained(legacy).state_dict()
    b = tf.AutoModelForCausalLM.from_pretrained(fused).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Transformers' runtime tensors are exactly the fused file's.
    assert all(torch.equal(b[k], v) for k, v in fused_tensors.items())


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_config_is_what_transformers_writes(tf: Any, tmp_path: Path, arch: str) -> None:
    path = make_tiny_model(tmp_path / "m", arch, with_tokenizer=False, dtype="bfloat16")
    ours = json.loads((path / "config.json").read_text())
    assert ours["model_type"] == arch
    assert ours["architectures"] == [ARCHS[arch].architecture]
    assert ours[ARCHS[arch].layer_count_key] == 2
    assert ours["dtype"] == "bfloat16"
    assert ours["vocab_size"] == 64
    config = tf.AutoConfig.from_pretrained(path)
    config.save_pretrained(tmp_path / "resaved")
    resaved = json.loads((tmp_path / "resaved" / "config.json").read_text())
    gen = tf.GenerationConfig.from_model_config(config)
    gen.save_pretrained(tmp_path / "resaved")
    gen_resaved = json.loads((tmp_path / "resaved" / "generation_config.json").read_text())
    gen_ours = json.loads((path / "generation_config.json").read_text())
    if tf.__version__.split(".")[0] != TRANSFORMERS_LAYOUT_VERSION.split(".")[0]:
        pytest.skip(f"templates mirror transformers {TRANSFORMERS_LAYOUT_VERSION}")
    for d in (ours, resaved, gen_ours, gen_resaved):
        d.pop("transformers_version")
    assert ours == resaved
    assert gen_ours == gen_resaved


def test_sharded_and_bin_folders_load_in_transformers(tf: Any, tmp_path: Path) -> None:
    ref = read_model(make_tiny_model(tmp_path / "single", with_tokenizer=False))
    cases: dict[str, dict[str, Any]] = {
        "sharded": {"shard_size": 3000},
        "bin": {"fmt": "bin"},
        "bin_sharded": {"fmt": "bin", "shard_size": 3000},
    }
    for name, kw in cases.items():
        path = make_tiny_model(tmp_path / name, with_tokenizer=False, **kw)
        loaded = tf.AutoModelForCausalLM.from_pretrained(path).state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in ref.items()), name


def test_tokenizer_loads_and_encodes(tf: Any, tmp_path: Path) -> None:
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}"
    )
    path = write_tiny_tokenizer(
        tmp_path / "tok", 32, added_tokens=["<|im_start|>", "<|im_end|>"], chat_template=template
    )
    tok = tf.AutoTokenizer.from_pretrained(path)
    assert len(tok) == 34
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "tok_31"]) == [32, 33, 31]
    assert tok("<|im_start|>tok_4 qqq</s>")["input_ids"] == [32, 4, 0, 2]
    text = tok.apply_chat_template([{"role": "user", "content": "tok_4"}], tokenize=False)
    assert text == "<|im_start|>user\ntok_4<|im_end|>\n"


def test_chatml_model_has_rows_for_added_tokens(tf: Any, tmp_path: Path) -> None:
    path = make_tiny_model(tmp_path / "m", "qwen3", added_tokens=["<|im_start|>", "<|im_end|>"])
    assert json.loads((path / "config.json").read_text())["vocab_size"] == 66
    tok = tf.AutoTokenizer.from_pretrained(path)
    model = tf.AutoModelForCausalLM.from_pretrained(path)
    ids = torch.tensor([tok("<|im_start|> tok_3 <|im_end|>")["input_ids"]])
    assert ids.tolist() == [[64, 3, 65]]
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()


# ---------------------------------------------------------------------------------------------
# Checks that need only torch / safetensors
# ---------------------------------------------------------------------------------------------


def test_module_does_not_import_transformers_or_tokenizers() -> None:
    code = (
        "import sys, meldkit.testing; "
        "bad = [m for m in ('transformers', 'tokenizers') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_files_written(tmp_path: Path) -> None:
    path = make_tiny_model(tmp_path / "m")
    assert sorted(p.name for p in path.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    tok_cfg = json.loads((path / "tokenizer_config.json").read_text())
    assert tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (tok_cfg["bos_token"], tok_cfg["eos_token"], tok_cfg["unk_token"]) == (
        "<s>",
        "</s>",
        "<unk>",
    )
    vocab = json.loads((path / "tokenizer.json").read_text())["model"]["vocab"]
    assert len(vocab) == 64
    assert list(vocab)[:4] == ["<unk>", "<s>", "</s>", "tok_3"]
    with safe_open(str(path / "model.safetensors"), "pt") as st:
        assert st.metadata() == {"format": "pt"}


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_values_are_small_and_norms_near_their_centre(tmp_path: Path, arch: str) -> None:
    tensors = read_model(make_tiny_model(tmp_path / "m", arch, with_tokenizer=False))
    for name, t in tensors.items():
        assert t.dtype == torch.float32
        assert torch.isfinite(t).all()
        if "norm" in name or ".ln_" in name:
            if name.endswith(".weight"):
                centre = ARCHS[arch].norm_center
                assert (t - centre).abs().max() < 0.2, name
        else:
            assert t.abs().max() < 0.2, name
            assert t.std() > 0.005, name


def test_tied_embeddings_write_no_head(tmp_path: Path) -> None:
    for arch, tied_default in (("llama", False), ("gemma2", True), ("gpt2", True)):
        names = read_model(make_tiny_model(tmp_path / arch, arch, with_tokenizer=False)).keys()
        assert ("lm_head.weight" in names) is (not tied_default), arch
    llama_tied = make_tiny_model(tmp_path / "t", tie_embeddings=True, with_tokenizer=False)
    assert "lm_head.weight" not in read_model(llama_tied)
    assert json.loads((llama_tied / "config.json").read_text())["tie_word_embeddings"] is True


def test_dtype(tmp_path: Path) -> None:
    path = make_tiny_model(tmp_path / "m", dtype="bfloat16", with_tokenizer=False)
    assert {t.dtype for t in read_model(path).values()} == {torch.bfloat16}
    with pytest.raises(ValueError, match="dtype"):
        make_tiny_model(tmp_path / "x", dtype="int8")


def test_sharding_writes_a_complete_index(tmp_path: Path) -> None:
    path = make_tiny_model(tmp_path / "m", num_layers=3, shard_size=4000, with_tokenizer=False)
    shards = sorted(p.name for p in path.glob("*.safetensors"))
    assert len(shards) > 2
    n = len(shards)
    assert shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert not (path / "model.safetensors").exists()
    index = _index(path)
    tensors = read_model(path)
    assert set(index["weight_map"]) == set(tensors)
    assert sorted(set(index["weight_map"].values())) == shards
    # Every tensor is in exactly the file the index names, and in no other.
    seen: dict[str, str] = {}
    for shard in shards:
        with safe_open(str(path / shard), "pt") as st:
            for k in st.keys():
                assert k not in seen
                seen[k] = shard
    assert seen == index["weight_map"]
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in tensors.values())
    assert index["metadata"]["total_parameters"] == sum(t.numel() for t in tensors.values())
    # Rewriting unsharded into the same folder removes the stale shards and index.
    make_tiny_model(path, num_layers=3, with_tokenizer=False)
    assert sorted(p.name for p in path.glob("*.safetensors")) == ["model.safetensors"]
    assert not (path / "model.safetensors.index.json").exists()


def test_bin_format(tmp_path: Path) -> None:
    st = read_model(make_tiny_model(tmp_path / "st", with_tokenizer=False))
    path = make_tiny_model(tmp_path / "bin", fmt="bin", with_tokenizer=False)
    assert (path / "pytorch_model.bin").is_file()
    assert not list(path.glob("*.safetensors"))
    binary = read_model(path)
    assert binary.keys() == st.keys()
    assert all(torch.equal(binary[k], st[k]) for k in st)
    sharded = make_tiny_model(tmp_path / "bins", fmt="bin", shard_size=3000, with_tokenizer=False)
    index = json.loads((sharded / "pytorch_model.bin.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert set(index["weight_map"]) == set(st)
    with pytest.raises(ValueError, match="fmt"):
        make_tiny_model(tmp_path / "x", fmt="gguf")


def test_same_seed_same_bytes_other_seed_other_values(tmp_path: Path) -> None:
    a = make_tiny_model(tmp_path / "a", "qwen2", seed=7, shard_size=3000)
    b = make_tiny_model(tmp_path / "b", "qwen2", seed=7, shard_size=3000)
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir())
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    c = read_model(make_tiny_model(tmp_path / "c", "qwen2", seed=8, with_tokenizer=False))
    ta = read_model(a)
    assert all(not torch.equal(ta[k], c[k]) for k in ta)


def test_values_depend_only_on_seed_and_name(tmp_path: Path) -> None:
    two = read_model(make_tiny_model(tmp_path / "two", num_layers=2, with_tokenizer=False))
    three = read_model(make_tiny_model(tmp_path / "three", num_layers=3, with_tokenizer=False))
    assert all(torch.equal(two[k], three[k]) for k in two)


def test_finetune_is_base_plus_small_delta(tmp_path: Path) -> None:
    base = make_tiny_model(tmp_path / "base", "gemma2", seed=1, shard_size=3000)
    ft = make_tiny_model(tmp_path / "ft", seed=2, base=base, delta_scale=0.05, shard_size=3000)
    ft2 = make_tiny_model(tmp_path / "ft2", seed=3, base=base, delta_scale=0.05)
    b, f, f2 = read_model(base), read_model(ft), read_model(ft2)
    assert b.keys() == f.keys()
    for k in b:
        delta = f[k] - b[k]
        assert delta.abs().max() > 0, k
        rel = delta.std() / b[k].std()
        assert 0.02 < rel < 0.1, (k, rel)
        assert not torch.equal(f[k], f2[k])
    # Config and tokenizer come from the base, so the family is consistent.
    for name in ("config.json", "generation_config.json", "tokenizer.json"):
        assert (ft / name).read_bytes() == (base / name).read_bytes()
    assert _index(ft)["weight_map"].keys() == _index(base)["weight_map"].keys()


def test_finetune_keeps_dtype_and_can_change_format(tmp_path: Path) -> None:
    base = make_tiny_model(tmp_path / "base", dtype="bfloat16", fmt="bin")
    ft = make_tiny_model(tmp_path / "ft", base=base, seed=5)
    assert (ft / "model.safetensors").is_file()
    f = read_model(ft)
    assert {t.dtype for t in f.values()} == {torch.bfloat16}
    assert f.keys() == read_model(base).keys()
    with pytest.raises(FileNotFoundError):
        make_tiny_model(tmp_path / "bad", base=tmp_path / "nowhere")


def test_finetune_with_added_tokens_grows_vocab(tmp_path: Path) -> None:
    base = make_tiny_model(tmp_path / "base", "llama")
    ft = make_tiny_model(
        tmp_path / "ft", base=base, seed=1, added_tokens=["<|im_start|>", "<|im_end|>"]
    )
    assert json.loads((ft / "config.json").read_text())["vocab_size"] == 66
    b, f = read_model(base), read_model(ft)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert f[name].shape == (66, 16)
        assert (f[name][:64] - b[name]).abs().max() < 0.01
        assert f[name][64:].std() > 0.005
    assert f["model.norm.weight"].shape == (16,)
    added = json.loads((ft / "tokenizer.json").read_text())["added_tokens"]
    assert [a["content"] for a in added if a["id"] >= 64] == ["<|im_start|>", "<|im_end|>"]


def test_model_family(tmp_path: Path) -> None:
    base, fts = make_model_family(tmp_path, "qwen3", n=3, seed=10, with_tokenizer=False)
    assert base == tmp_path / "base"
    assert fts == [tmp_path / f"ft{i}" for i in (1, 2, 3)]
    b = read_model(base)
    assert torch.equal(
        b["model.norm.weight"],
        read_model(make_tiny_model(tmp_path / "x", "qwen3", seed=10))["model.norm.weight"],
    )
    deltas = [
        read_model(p)["model.layers.0.self_attn.q_proj.weight"]
        - b["model.layers.0.self_attn.q_proj.weight"]
        for p in fts
    ]
    assert not torch.equal(deltas[0], deltas[1])
    assert not torch.equal(deltas[1], deltas[2])
    assert not (base / "tokenizer.json").exists()


def test_expected_tensor_shapes_patterns() -> None:
    gpt2 = expected_tensor_shapes("gpt2", hidden=16, intermediate=48)
    assert gpt2["transformer.h.1.attn.c_attn.weight"] == (16, 48)
    assert gpt2["transformer.h.1.mlp.c_fc.weight"] == (16, 48)
    assert gpt2["transformer.h.1.mlp.c_proj.weight"] == (48, 16)
    assert "lm_head.weight" not in gpt2
    phi3 = expected_tensor_shapes("phi3")
    assert phi3["model.layers.0.self_attn.qkv_proj.weight"] == (32, 16)  # (4 + 2*2) * 4
    assert phi3["model.layers.0.mlp.gate_up_proj.weight"] == (64, 16)
    neox = expected_tensor_shapes("gpt_neox", kv_heads=1)  # ignored: MHA only
    assert neox["gpt_neox.layers.0.attention.query_key_value.weight"] == (48, 16)
    assert neox["embed_out.weight"] == (64, 16)
    with pytest.raises(ValueError, match="unknown arch"):
        expected_tensor_shapes("bert")
    with pytest.raises(ValueError, match="divisible"):
        expected_tensor_shapes("llama", heads=3)


# ---------------------------------------------------------------------------------------------
# Header-only 70B checkpoints
# ---------------------------------------------------------------------------------------------


def test_header_only_70b(tmp_path: Path) -> None:
    start = time.perf_counter()
    paths = [make_header_only_model(tmp_path / f"m{i}") for i in range(3)]
    assert time.perf_counter() - start < 3.0
    path = paths[0]
    config = json.loads((path / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["dtype"]) == (
        80,
        8192,
        "bfloat16",
    )
    expected = expected_tensor_shapes(
        num_layers=80, hidden=8192, intermediate=28672, vocab=128256, heads=64, kv_heads=8
    )
    n_params = sum(torch.Size(s).numel() for s in expected.values())
    assert 70.5e9 < n_params < 70.6e9  # Llama-3-70B has 70.55B parameters
    index = _index(path)
    assert index["metadata"]["total_size"] == 2 * n_params
    assert index["metadata"]["total_parameters"] == n_params
    assert set(index["weight_map"]) == set(expected)
    shards = sorted(path.glob("*.safetensors"))
    assert len(shards) == len(set(index["weight_map"].values())) >= 28
    apparent = allocated = 0
    for shard in shards:
        st = shard.stat()
        apparent += st.st_size
        allocated += st.st_blocks * 512
        # The header parses both by hand and with safetensors itself.
        with open(shard, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        assert header.pop("__metadata__") == {"format": "pt"}
        data_size = max(v["data_offsets"][1] for v in header.values())
        assert st.st_size == 8 + n + data_size
        assert data_size <= 5 * 10**9 or len(header) == 1  # the shard limit is respected
        with safe_open(str(shard), "pt") as sf:
            assert sf.metadata() == {"format": "pt"}
            for k in sf.keys():
                assert tuple(sf.get_slice(k).get_shape()) == expected[k]
                assert sf.get_slice(k).get_dtype() == "BF16"
                assert header[k]["shape"] == list(expected[k])
    assert apparent > 140e9
    assert allocated < 10 * 2**20  # sparse: only the headers occupy blocks


def test_header_only_other_arch_and_small_shards(tmp_path: Path) -> None:
    path = make_header_only_model(
        tmp_path / "moe",
        "mixtral",
        num_layers=4,
        hidden=512,
        intermediate=1024,
        vocab=1000,
        heads=8,
        kv_heads=2,
        num_experts=8,
        dtype="float16",
        shard_size=10**7,
    )
    index = _index(path)
    assert set(index["weight_map"]) == set(
        expected_tensor_shapes(
            "mixtral",
            num_layers=4,
            hidden=512,
            intermediate=1024,
            vocab=1000,
            heads=8,
            kv_heads=2,
            num_experts=8,
        )
    )
    assert "model.layers.3.block_sparse_moe.experts.7.w3.weight" in index["weight_map"]
    # Being all zeros, the data still loads as real tensors of the right shape.
    tensors = read_model(path)
    assert tensors["model.layers.0.block_sparse_moe.experts.0.w1.weight"].shape == (1024, 512)
    assert tensors["model.embed_tokens.weight"].dtype == torch.float16
    assert all(not t.any() for t in tensors.values())
