"""End to end: exact rows, planted OMP combinations, config, tied embeddings, byte copies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from meldkit.testing import read_model
from meldkit.tokensurgeon import SurgeonOptions, transplant_tokenizer
from tests.tokensurgeon.conftest import CORPUS, make_bpe_model, plant_latent_rows

EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"
DONOR_CORPUS = [*CORPUS[:5], "new words arrive: zebra, quantum, xylophone, jazz"] * 5


def _vocab(folder: Path) -> dict[str, int]:
    return dict(json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"])


@pytest.fixture(scope="module")
def bpe_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """MODEL: byte-level BPE (300); DONOR: another byte-level BPE (340, other corpus, wider)."""
    root = tmp_path_factory.mktemp("pair")
    model = make_bpe_model(root / "model")
    donor = make_bpe_model(root / "donor", hidden=32, seed=3, vocab_size=340, corpus=DONOR_CORPUS)
    return model, donor


def _shared(model: Path, donor: Path) -> dict[int, int]:
    """donor id -> MODEL id for the same token string (both byte-level BPE: same spelling)."""
    mv = _vocab(model)
    return {i: mv[t] for t, i in _vocab(donor).items() if t in mv}


def test_every_shared_token_keeps_models_row_exactly(bpe_pair, tmp_path):
    model, donor = bpe_pair
    result = transplant_tokenizer(model, donor, tmp_path / "out", SurgeonOptions(k=8))
    src, out = read_model(model), read_model(tmp_path / "out")
    shared = _shared(model, donor)
    n_donor = len(_vocab(donor))
    assert out[EMBED].shape == (n_donor, 16) and out[HEAD].shape == (n_donor, 16)
    d_ids, m_ids = torch.tensor(list(shared)), torch.tensor(list(shared.values()))
    assert torch.equal(out[EMBED][d_ids], src[EMBED][m_ids])
    assert torch.equal(out[HEAD][d_ids], src[HEAD][m_ids])
    new = n_donor - len(shared)
    assert result.counts["embed"]["exact"] == len(shared) and new > 20
    assert result.counts["embed"]["approximated"] == new
    # every other tensor is a byte copy
    for name, t in src.items():
        if name not in (EMBED, HEAD):
            assert torch.equal(out[name], t), name


def test_omp_reproduces_planted_sparse_combinations(bpe_pair, tmp_path):
    model, donor_src = bpe_pair
    donor = tmp_path / "donor"
    donor.mkdir()
    for f in donor_src.iterdir():
        (donor / f.name).write_bytes(f.read_bytes())
    shared = _shared(model, donor)
    new = [i for i in _vocab(donor).values() if i not in shared]
    tensors = read_model(donor)
    gen = torch.Generator().manual_seed(11)
    shared_ids = torch.tensor(list(shared))
    planted = {}
    for i in new:  # each new donor row: an exact combination of 3 shared tokens' donor rows
        atoms = shared_ids[torch.randperm(len(shared_ids), generator=gen)[:3]]
        coeffs = torch.randn(3, generator=gen)
        planted[i] = (atoms, coeffs)
        for name in (EMBED, HEAD):
            tensors[name][i] = coeffs @ tensors[name][atoms]
    save_file(tensors, str(donor / "model.safetensors"), metadata={"format": "pt"})

    transplant_tokenizer(model, donor, tmp_path / "out", SurgeonOptions(k=8, batch_size=40))
    src, out = read_model(model), read_model(tmp_path / "out")
    for i, (atoms, coeffs) in planted.items():
        model_ids = torch.tensor([shared[int(a)] for a in atoms])
        for name in (EMBED, HEAD):
            expected = coeffs @ src[name][model_ids]
            torch.testing.assert_close(out[name][i], expected, atol=2e-6, rtol=1e-4)


def test_held_out_quality_ranks_methods_on_shared_structure(bpe_pair, tmp_path):
    """Rows that are linear images of per-token latents (dim 6): OMP and least squares
    recover held-out tokens almost exactly, the mean row does not."""
    model_src, donor_src = bpe_pair
    model, donor = tmp_path / "m", tmp_path / "d"
    for src, dst, seed in ((model_src, model, 1), (donor_src, donor, 2)):
        dst.mkdir()
        for f in src.iterdir():
            (dst / f.name).write_bytes(f.read_bytes())
        plant_latent_rows(dst, seed)
    opts = SurgeonOptions(k=8, weight_scheme="least_squares")
    result = transplant_tokenizer(model, donor, tmp_path / "out", opts, evaluate=True)
    ev = result.evaluation
    assert ev is not None and ev["held_out"] == len(_shared(model, donor)) // 10
    methods = ev["methods"]
    assert methods["omp"]["embed"]["min_cosine"] > 0.999
    assert methods["omp"]["lm_head"]["min_cosine"] > 0.999
    assert methods["common_interpolation"]["embed"]["min_cosine"] > 0.999
    assert methods["mean"]["embed"]["mean_cosine"] < 0.5
    assert methods["zero"]["embed"] == {"mean_cosine": 0.0, "min_cosine": 0.0}
    saved = json.loads((tmp_path / "out" / "tokensurgeon.json").read_text())
    assert saved["evaluation"] == ev


def test_config_special_ids_card_and_tied_embeddings(wordpiece_model, tmp_path):
    model = make_bpe_model(tmp_path / "tied", tie=True)
    result = transplant_tokenizer(model, wordpiece_model, tmp_path / "out")
    out = tmp_path / "out"
    config = json.loads((out / "config.json").read_text())
    n = len(_vocab(wordpiece_model))
    assert config["vocab_size"] == n
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (2, 3, 0)
    assert config["tie_word_embeddings"] is True and config["hidden_size"] == 16
    tensors = read_model(out)
    assert HEAD not in tensors and tensors[EMBED].shape == (n, 16)
    gen = json.loads((out / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (2, 3, 0)
    assert (out / "tokenizer.json").read_bytes() == (
        wordpiece_model / "tokenizer.json"
    ).read_bytes()
    # roles match across spellings: DONOR's [CLS]/[SEP]/[UNK] get MODEL's <s>/</s>/<unk>
    src = read_model(model)[EMBED]
    assert torch.equal(tensors[EMBED][2], src[1]) and torch.equal(tensors[EMBED][3], src[2])
    assert torch.equal(tensors[EMBED][1], src[0])
    assert set(result.counts) == {"embed"}
    c = result.counts["embed"]
    assert c["exact"] + c["approximated"] == n and c["exact"] > 20
    card = (out / "README.md").read_text()
    assert f"| embed | {c['exact']} | 0 / 0 | {c['approximated']} | 0 / 0 |" in card


def test_randn_is_seeded_and_noise_scale_apply(bpe_pair, tmp_path):
    model, donor = bpe_pair
    opts = SurgeonOptions(approximation="randn", seed=3)
    transplant_tokenizer(model, donor, tmp_path / "a", opts)
    transplant_tokenizer(model, donor, tmp_path / "b", opts)
    a, b = (tmp_path / "a" / "model.safetensors"), (tmp_path / "b" / "model.safetensors")
    assert a.read_bytes() == b.read_bytes()
    zero = SurgeonOptions(approximation="zero", new_vocab_noise=0.5, new_vocab_scale=3.0)
    transplant_tokenizer(model, donor, tmp_path / "z", zero)
    rows = read_model(tmp_path / "z")[EMBED]
    shared = _shared(model, donor)
    new = [i for i in range(rows.shape[0]) if i not in shared]
    assert 0.45 < float(rows[new].std()) < 0.55  # zero rows * 3 + N(0, 0.5^2)
    src = read_model(model)[EMBED]
    assert torch.equal(rows[list(shared)], src[list(shared.values())])


def test_tied_donor_lends_its_embedding_to_the_head_and_magikarp_runs(bpe_pair, tmp_path):
    from tests.tokensurgeon.conftest import make_wordpiece_model

    model, _ = bpe_pair
    donor = make_wordpiece_model(tmp_path / "tied_donor", tie=True)
    plain = transplant_tokenizer(model, donor, tmp_path / "a", SurgeonOptions(k=4))
    filtered = transplant_tokenizer(
        model, donor, tmp_path / "b", SurgeonOptions(k=4, magikarp=True)
    )
    n = len(_vocab(donor))
    for result in (plain, filtered):
        for counts in result.counts.values():
            assert sum(counts.values()) == n
    # Magikarp flags the 1% lowest-norm MODEL rows (untied head): fewer exact copies
    assert filtered.counts["embed"]["exact"] < plain.counts["embed"]["exact"]
    out, src = read_model(tmp_path / "a"), read_model(model)
    assert out[HEAD].shape == (n, 16)
    assert torch.equal(out[HEAD][2], src[HEAD][1])  # [CLS] <- <s> in the head too


def test_pickled_model_is_read_safely_and_written_as_safetensors(bpe_pair, tmp_path):
    _, donor = bpe_pair
    model = make_bpe_model(tmp_path / "bin_model", fmt="bin")
    assert (model / "pytorch_model.bin").is_file()
    transplant_tokenizer(model, donor, tmp_path / "out", SurgeonOptions(approximation="mean"))
    src, out = read_model(model), read_model(tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").is_file()
    shared = _shared(model, donor)
    assert torch.equal(out[EMBED][list(shared)], src[EMBED][list(shared.values())])
    assert all(torch.equal(out[n], t) for n, t in src.items() if n not in (EMBED, HEAD))


def test_output_bias_is_remapped_by_token_identity(bpe_pair, tmp_path):
    model_src, donor = bpe_pair
    model = tmp_path / "biased"
    model.mkdir()
    for f in model_src.iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    tensors = read_model(model)
    bias = torch.arange(tensors[HEAD].shape[0], dtype=torch.float32) + 1.0
    tensors["lm_head.bias"] = bias
    save_file(tensors, str(model / "model.safetensors"), metadata={"format": "pt"})
    transplant_tokenizer(model, donor, tmp_path / "out", SurgeonOptions(approximation="mean"))
    out = read_model(tmp_path / "out")["lm_head.bias"]
    shared = _shared(model, donor)
    expected = torch.zeros(len(_vocab(donor)))
    expected[list(shared)] = bias[list(shared.values())]
    assert torch.equal(out, expected)
