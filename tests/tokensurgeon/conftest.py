"""Tiny Llama models with real tokenizers trained here with ``tokenizers``: MODEL speaks a
byte-level BPE, DONOR a WordPiece vocabulary (different styles, sizes and hidden widths)."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from meldkit.testing import make_tiny_model, read_model

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a merge of two models needs one tokenizer",
    "tokenizer transplant gives a model new words without training",
    "orthogonal matching pursuit picks a few shared tokens",
    "hello world, hello models, hello tokens",
    "streaming writers copy every other tensor byte for byte",
    "the lazy dog sleeps while the quick fox runs",
] * 4


def _write_tokenizer_files(folder: Path, tokenizer: object, specials: dict[str, str]) -> None:
    tokenizer.save(str(folder / "tokenizer.json"))  # type: ignore[attr-defined]
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 512, **specials}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(specials), encoding="utf-8")


def _set_config(folder: Path, **values: object) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config.update(values)
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")


def byte_level_bpe(vocab_size: int = 300, corpus: list[str] | None = None) -> object:
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus or CORPUS, trainer)
    return tok


def wordpiece() -> object:
    """A WordPiece tokenizer over a fixed vocabulary (WordPiece training is not deterministic):
    specials, the corpus's words, its letters and ``##`` letters and a few suffixes."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, normalizers, pre_tokenizers

    words = sorted({w.strip(",:") for line in CORPUS for w in line.split()} - {""})
    letters = sorted({c for w in words for c in w})
    suffixes = ["##s", "##ing", "##er", "##ed", "##ly"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", ",", *letters, *words]
    vocab += [f"##{c}" for c in letters] + [s for s in suffixes if s not in vocab]
    vocab = list(dict.fromkeys([*vocab, "zebra", "quantum", "jazz"]))  # unique, in order
    tok = tokenizers.Tokenizer(
        models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]")
    )
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()
    tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    return tok


def make_bpe_model(
    folder: Path,
    *,
    tie: bool = False,
    hidden: int = 16,
    seed: int = 0,
    vocab_size: int = 300,
    corpus: list[str] | None = None,
    fmt: str = "safetensors",
) -> Path:
    tok = byte_level_bpe(vocab_size, corpus)
    n = tok.get_vocab_size()  # type: ignore[attr-defined]
    make_tiny_model(
        folder,
        "llama",
        hidden=hidden,
        vocab=n,
        seed=seed,
        tie_embeddings=tie,
        with_tokenizer=False,
        fmt=fmt,
    )
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    _write_tokenizer_files(folder, tok, specials)
    _set_config(folder, bos_token_id=1, eos_token_id=2, vocab_size=n)
    return folder


def make_wordpiece_model(
    folder: Path, *, tie: bool = False, hidden: int = 32, seed: int = 5
) -> Path:
    tok = wordpiece()
    n = tok.get_vocab_size()  # type: ignore[attr-defined]
    make_tiny_model(
        folder, "llama", hidden=hidden, vocab=n, seed=seed, tie_embeddings=tie, with_tokenizer=False
    )
    specials = {
        "bos_token": "[CLS]",
        "eos_token": "[SEP]",
        "unk_token": "[UNK]",
        "pad_token": "[PAD]",
    }
    _write_tokenizer_files(folder, tok, specials)
    _set_config(folder, bos_token_id=2, eos_token_id=3, pad_token_id=0, vocab_size=n)
    return folder


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """These tensors are tiny: on a busy shared machine torch's thread pool costs more than it
    saves (20x in OMP's many small steps). Restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def bpe_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bpe_model(tmp_path_factory.mktemp("bpe") / "model")


@pytest.fixture(scope="session")
def wordpiece_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_wordpiece_model(tmp_path_factory.mktemp("wp") / "donor")


def token_latent(token: str, dim: int) -> torch.Tensor:
    """A deterministic latent vector per token string (seeded by its CRC)."""
    gen = torch.Generator().manual_seed(zlib.crc32(token.encode("utf-8")))
    return torch.randn(dim, generator=gen)


def plant_latent_rows(folder: Path, seed: int, dim: int = 6) -> None:
    """Rewrite a model's embedding (and head) as ``A @ z(token)``: every row is a linear image
    of one latent vector per token string, shared by every model, as if both had learned the
    same meanings. A fresh random ``A`` per model and matrix."""
    vocab = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    tensors = read_model(folder)
    gen = torch.Generator().manual_seed(seed)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        if name not in tensors:
            continue
        rows, hidden = tensors[name].shape
        a = torch.randn(hidden, dim, generator=gen)
        z = torch.zeros(rows, dim)
        for token, i in vocab.items():
            z[i] = token_latent(token, dim)
        tensors[name] = (z @ a.T).contiguous()
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
