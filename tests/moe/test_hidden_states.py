"""Router vectors from hidden states: equal to a direct transformers forward pass, per prompt."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from meldkit.errors import InputError, RecipeError
from meldkit.moe.hidden_states import GateMode, prompt_hidden_states
from meldkit.testing import make_tiny_model

transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny matrices: a second thread only adds synchronisation, which a busy machine makes slow."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Added tokens encode to themselves with every tokenizer transformers builds for the tiny models
# (Qwen2's byte-level pipeline would drop the tiny vocab's plain words).
WORDS = [f"<w{i}>" for i in range(8)]
PROMPTS = [["<w1><w2>", "<w3> <w4><w5><w6>"], ["<w0>", "<w7><w7>", "<w5>"], ["<w2><w5><w1>"]]
NEGATIVE = [[], ["<w6>"], ["<w1>", "<w3><w3><w3><w3><w3>"]]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hidden")
    return {
        arch: make_tiny_model(root / arch, arch, num_layers=3, added_tokens=WORDS, seed=3)
        for arch in ("llama", "qwen2")
    }


def _layer_inputs(model: torch.nn.Module, ids: list[int]) -> list[torch.Tensor]:
    """The input of every decoder layer for one unpadded prompt, caught by forward pre-hooks
    (independent of output_hidden_states): each (seq, hidden)."""
    caught: list[torch.Tensor] = []

    def hook(module: object, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
        states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        assert isinstance(states, torch.Tensor)
        caught.append(states[0].detach().clone())

    handles = [
        layer.register_forward_pre_hook(hook, with_kwargs=True)
        for layer in model.model.layers  # type: ignore[union-attr]
    ]
    with torch.no_grad():
        model(input_ids=torch.tensor([ids]))
    for h in handles:
        h.remove()
    return caught


def _expected(folder: Path, mode: GateMode) -> torch.Tensor:
    """Router rows by the formula: per layer, mean over positive prompts of the layer input at
    the last token (or averaged over tokens), minus the negative mean, L2-normalised."""
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    rows = []
    for positive, negative in zip(PROMPTS, NEGATIVE):
        means = []
        for texts in (positive, negative):
            vectors = []
            for text in texts:
                ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
                states = torch.stack(_layer_inputs(model, ids))  # (layers, seq, hidden)
                vectors.append(states[:, -1] if mode == "hidden" else states.mean(dim=1))
            means.append(torch.stack(vectors).mean(0) if vectors else torch.zeros(()))
        row = means[0] - means[1]  # (layers, hidden)
        rows.append(row / row.norm(dim=-1, keepdim=True))
    return torch.stack(rows, dim=1)  # (layers, experts, hidden)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("mode", ["hidden", "hidden_avg"])
def test_rows_equal_direct_forward_pass(models: dict[str, Path], arch: str, mode: GateMode) -> None:
    got = prompt_hidden_states(str(models[arch]), PROMPTS, NEGATIVE, mode)
    assert got.shape == (3, 3, 16) and got.dtype == torch.float32
    torch.testing.assert_close(got, _expected(models[arch], mode), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(3, 3))


@pytest.mark.parametrize(("mode", "sizes"), [("hidden", (3,)), ("hidden_avg", (2, 64))])
def test_batch_size_does_not_change_the_result(
    models: dict[str, Path], mode: GateMode, sizes: tuple[int, ...]
) -> None:
    # Batches put prompts of different lengths together, so padding is exercised.
    base = str(models["llama"])
    one = prompt_hidden_states(base, PROMPTS, NEGATIVE, mode, batch_size=1)
    for size in sizes:
        got = prompt_hidden_states(base, PROMPTS, NEGATIVE, mode, batch_size=size)
        torch.testing.assert_close(got, one, rtol=1e-6, atol=1e-6)


def test_tokenizer_files_are_left_unchanged(models: dict[str, Path]) -> None:
    folder = models["llama"]

    def digests() -> dict[str, str]:
        return {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
        }

    before = digests()
    prompt_hidden_states(str(folder), PROMPTS, NEGATIVE, "hidden")
    assert digests() == before


def test_missing_tokenizer(tmp_path: Path) -> None:
    folder = make_tiny_model(tmp_path / "bare", "llama", with_tokenizer=False)
    with pytest.raises(InputError) as err:
        prompt_hidden_states(str(folder), PROMPTS, NEGATIVE, "hidden")
    assert err.value.message == (
        f"the base model '{folder}' has no tokenizer (none of tokenizer.json, tokenizer.model, "
        "vocab.json, spiece.model)"
    )
    assert err.value.hint == (
        "the hidden and hidden_avg gates tokenize the prompts with the base model's tokenizer; "
        "copy its tokenizer files into that folder"
    )


def test_expert_without_prompts(models: dict[str, Path]) -> None:
    with pytest.raises(RecipeError) as err:
        prompt_hidden_states(str(models["llama"]), [["<w1>"], []], [[], ["<w2>"]], "hidden_avg")
    assert err.value.message == (
        "experts[1] has no positive_prompts; the hidden and hidden_avg gates need at least one "
        "per expert"
    )
    assert err.value.hint == "add positive_prompts to every expert, or use gate_mode: random"


def test_no_experts(models: dict[str, Path]) -> None:
    with pytest.raises(RecipeError, match=r"^no experts to compute router vectors for"):
        prompt_hidden_states(str(models["llama"]), [], [], "hidden")


def test_negative_equal_to_positive_is_an_error(models: dict[str, Path]) -> None:
    with pytest.raises(RecipeError) as err:
        prompt_hidden_states(str(models["llama"]), [["<w1>"], ["<w2>"]], [[], ["<w2>"]], "hidden")
    assert err.value.message == (
        "experts[1]: the positive and negative prompts give the same hidden state at layer 0, "
        "so the router vector is zero"
    )


def test_mode_must_be_a_hidden_mode(models: dict[str, Path]) -> None:
    with pytest.raises(RecipeError) as err:
        prompt_hidden_states(str(models["llama"]), PROMPTS, NEGATIVE, "cheap_embed")  # type: ignore[arg-type]
    assert err.value.message == (
        "gate mode 'cheap_embed' does not use hidden states; expected hidden or hidden_avg"
    )


def test_without_transformers(models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(InputError) as err:
        prompt_hidden_states(str(models["llama"]), PROMPTS, NEGATIVE, "hidden")
    assert err.value.message == (
        "the hidden and hidden_avg gates need transformers to tokenize the prompts and run the "
        "base model"
    )
    assert err.value.hint == "install the Hugging Face extras: pip install 'meldkit[hf]'"


def test_prompt_without_tokens(tmp_path: Path) -> None:
    # A tokenizer without a BOS token: an empty prompt has no tokens at all.
    folder = make_tiny_model(tmp_path / "nobos", "llama", added_tokens=WORDS)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = folder / name
        path.write_text(json.dumps({**json.loads(path.read_text()), "bos_token": None}))
    with pytest.raises(RecipeError) as err:
        prompt_hidden_states(str(folder), [["<w1>"], ["<w2>"]], [[], ["<w3>", ""]], "hidden")
    assert err.value.message == "experts[1].negative_prompts: the prompt '' has no tokens"
    assert err.value.hint == "remove empty prompts (the tokenizer has no BOS token to add)"
