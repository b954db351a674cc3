"""Refused options and bad inputs: exact messages, all plan problems at once, CLI output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meldkit.cli.main import main
from meldkit.errors import MeldError, OutputError, PlanError, RecipeError
from meldkit.testing import make_tiny_model
from meldkit.tokensurgeon import SurgeonOptions, transplant_tokenizer

METHODS = "use one of: omp, common_interpolation, subword, mean, zero, randn, john_hewitt"


def test_broken_mergekit_method_is_refused_with_the_reason():
    with pytest.raises(RecipeError) as exc:
        SurgeonOptions(approximation="stb").check()
    assert exc.value.message == (
        "approximation method 'stb' is not supported: MergeKit's stb is broken (it passes its "
        "options object where k is expected), so there is no reference behaviour to reproduce"
    )
    assert exc.value.hint == METHODS


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            SurgeonOptions(approximation="ompp"),
            "unknown approximation method 'ompp'. Did you mean 'omp'?",
        ),
        (SurgeonOptions(byte_match="embeds"), "unknown byte match 'embeds'. Did you mean 'embed'?"),
        (SurgeonOptions(k=0), "k must be a positive integer, got 0"),
        (SurgeonOptions(batch_size=0), "batch size must be a positive integer or -1, got 0"),
        (
            SurgeonOptions(omp_candidates=-1),
            "omp candidates must be a non-negative integer, got -1",
        ),
        (
            SurgeonOptions(approximation="landmark_pca"),
            "approximation method 'landmark_pca' is not supported: landmark_pca is not implemented in meldkit",
        ),
    ],
)
def test_bad_options_are_named(options, message):
    with pytest.raises(RecipeError) as exc:
        options.check()
    assert exc.value.message == message


def test_every_input_problem_is_reported_before_any_compute(tmp_path: Path, bpe_model: Path):
    no_tokenizer = make_tiny_model(tmp_path / "bare", with_tokenizer=False)
    short = tmp_path / "short"  # a tokenizer longer than the embedding
    make_tiny_model(short, vocab=8, with_tokenizer=False)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (short / f).write_bytes((bpe_model / f).read_bytes())
    with pytest.raises(PlanError) as exc:
        transplant_tokenizer(no_tokenizer, short, tmp_path / "out")
    assert exc.value.problems == [
        f"MODEL: no tokenizer files in {no_tokenizer}",
        "DONOR: the tokenizer has 300 tokens but 'model.embed_tokens.weight' has only 8 rows",
    ]
    assert not (tmp_path / "out").exists()
    assert not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_output_inside_an_input_is_refused(bpe_model: Path, wordpiece_model: Path):
    with pytest.raises(OutputError) as exc:
        transplant_tokenizer(bpe_model, wordpiece_model, bpe_model / "out")
    assert exc.value.message == (
        f"output folder {bpe_model / 'out'} is inside the input model folder {bpe_model}"
    )


def test_cuda_without_a_gpu_is_an_error(bpe_model, wordpiece_model, tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(MeldError) as exc:
        transplant_tokenizer(
            bpe_model, wordpiece_model, tmp_path / "o", SurgeonOptions(device="cuda")
        )
    assert exc.value.message == "device 'cuda' was asked for but no CUDA GPU is available"


def test_cli_prints_error_and_hint(bpe_model, wordpiece_model, tmp_path, capsys):
    code = main(
        [
            "tokensurgeon",
            str(bpe_model),
            str(wordpiece_model),
            str(tmp_path / "o"),
            "-a",
            "john_hewit",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "error: unknown approximation method 'john_hewit'. Did you mean 'john_hewitt'?",
        f"hint: {METHODS}",
    ]
    assert not (tmp_path / "o").exists()


def test_cli_writes_a_model_with_mergekit_spellings(bpe_model, wordpiece_model, tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["tokensurgeon", str(bpe_model), str(wordpiece_model), str(out)]
    argv += [
        "-a",
        "common_interpolation",
        "-k",
        "4",
        "-c",
        "-w",
        "barycentric",
        "-pm",
        "embed",
        "-bm",
        "no",
        "--batch-size",
        "-1",
        "--device",
        "auto",
    ]
    assert main(argv) == 0
    saved = json.loads((out / "tokensurgeon.json").read_text())
    assert saved["options"]["approximation"] == "common_interpolation"
    assert saved["options"]["cosine_similarity"] is True
    torch = pytest.importorskip("torch")
    assert saved["options"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    # prefix matching on the embedding only (MergeKit applies 'embed' to lm_head)
    assert saved["counts"]["embed"]["prefix"] > 0 and saved["counts"]["lm_head"]["prefix"] == 0
    assert capsys.readouterr().out.startswith("embed: ")
