"""Router helpers: the condition-number check and the cheap_embed sum."""

from __future__ import annotations

import torch

from meldkit.moe.routers import cheap_embedding, degenerate_layers, degenerate_warning


def test_condition_number_flags_similar_rows() -> None:
    eye = torch.eye(4, 8)  # orthonormal rows: condition number 1
    close = eye.clone()
    close[1] = close[0] + 0.01 * eye[1]  # rows 0 and 1 nearly parallel: condition number ~200
    gates = torch.stack([eye, close, eye])  # (layers, experts, hidden)
    assert degenerate_layers(gates, n_routed=4) == [1]
    # a shared expert's row (beyond n_routed) is not part of the routed router
    assert degenerate_layers(torch.stack([close]), n_routed=1) == []
    assert degenerate_warning([1], 3) == (
        "the router of layer(s) 1 is degenerate (condition number above 5): the prompts of some "
        "experts are too similar, and those experts will rarely be chosen"
    )
    assert degenerate_warning([0, 1, 2], 3).startswith("every layer's router is degenerate")
    assert degenerate_warning([], 3) is None


def test_cheap_embedding_sums_rows_over_prompts() -> None:
    embed = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    # rows 0 + 1 + 2 + 2 = (7, 10), normalised
    got = cheap_embedding(embed, [[0, 1, 2], [2]])
    want = torch.tensor([7.0, 10.0]) / (7.0**2 + 10.0**2) ** 0.5
    assert torch.allclose(got, want)
    assert torch.equal(cheap_embedding(embed, [[]]), torch.zeros(2))  # nothing to sum


def test_prompt_ids_without_transformers_match_autotokenizer(family, monkeypatch) -> None:
    import sys

    import pytest

    from meldkit.moe.routers import _prompt_encoder

    pytest.importorskip("transformers")
    base, _ = family("llama")
    with_hf, bos = _prompt_encoder(base)
    monkeypatch.setitem(sys.modules, "transformers", None)  # import fails
    plain, plain_bos = _prompt_encoder(base)
    assert (bos, plain_bos) == ("<s>", "<s>")
    for text in ("<s>tok_5 tok_9", "<s>tok_7 unknown words"):
        assert plain(text) == with_hf(text)
    assert plain("<s>tok_5") == [1, 5]
