"""Real generation: a byte-level BPE Llama given a WordPiece tokenizer loads in transformers
and generates, for every approximation method; the held-out quality table covers them all."""

from __future__ import annotations

import json

import pytest
import torch

from meldkit.cli.main import main
from meldkit.tokensurgeon import APPROXIMATIONS

transformers = pytest.importorskip("transformers")


def test_output_loads_and_generates_in_transformers(bpe_model, wordpiece_model, tmp_path, capsys):
    out = tmp_path / "out"
    report = tmp_path / "report.json"
    code = main(
        [
            "tokensurgeon",
            str(bpe_model),
            str(wordpiece_model),
            str(out),
            "-k",
            "16",
            "--omp-candidates",
            "32",
            "--report",
            str(report),
        ]
    )
    assert code == 0
    options = json.loads((out / "tokensurgeon.json").read_text())["options"]
    assert options["omp_candidates"] == 32
    printed = capsys.readouterr().out
    assert printed.startswith("embed: ") and "approximated" in printed
    for method in APPROXIMATIONS:  # one table row per method
        assert any(line.startswith(method + " ") for line in printed.splitlines())
    evaluation = json.loads(report.read_text())
    assert set(evaluation["methods"]) == set(APPROXIMATIONS)
    for entry in evaluation["methods"].values():
        for m in ("embed", "lm_head"):
            assert -1.0 <= entry[m]["mean_cosine"] <= 1.0

    tok = transformers.AutoTokenizer.from_pretrained(str(out), trust_remote_code=False)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=False)
    donor_tok = transformers.AutoTokenizer.from_pretrained(str(wordpiece_model))
    assert len(tok) == len(donor_tok) == model.config.vocab_size
    assert model.get_input_embeddings().weight.shape == (len(tok), 16)
    ids = tok("the quick fox", return_tensors="pt").input_ids
    assert tok.bos_token_id == model.config.bos_token_id == 2  # the donor's [CLS]
    assert tok.convert_ids_to_tokens(ids[0].tolist()) == ["the", "quick", "fox"]
    with torch.no_grad():
        generated = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, ids.shape[1] + 4)
    assert int(generated.max()) < len(tok)
    assert isinstance(tok.decode(generated[0]), str)
