"""The engine policy: its defaults, the MELDKIT_ENGINE_POLICY overrides, and that no knob
changes an output byte."""

from __future__ import annotations

import pytest

from meldkit.api import run_merge
from meldkit.errors import MeldError
from meldkit.execute.policy import DEFAULT_POLICY, POLICY_ENV, EnginePolicy, policy_from_environment


def test_defaults_are_the_tuned_values() -> None:
    p = DEFAULT_POLICY
    assert (p.prefetch, p.read_ahead_bytes, p.read_ahead_whole_tensor_bytes) == (
        2,
        256 << 20,
        64 << 20,
    )
    assert (p.chunk_elements, p.max_math_threads, p.read_threads, p.write_threads) == (
        4 << 20,
        8,
        1,
        1,
    )
    assert (p.write_backlog, p.big_first, p.big_share) == (1, True, 0.5)
    assert (p.trim_heap_bytes, p.map_min_bytes, p.writeback, p.hash_chunk_bytes) == (
        64 << 20,
        1 << 20,
        True,
        8 << 20,
    )
    assert p.read_ahead(True) == 256 << 20 and p.read_ahead(False) == 64 << 20
    assert p.math_threads(3) == 3 and 1 <= p.math_threads(None) <= 8


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(POLICY_ENV, raising=False)
    assert policy_from_environment() == DEFAULT_POLICY
    monkeypatch.setenv(POLICY_ENV, '{"prefetch": 4, "trim_heap_bytes": null, "big_first": false}')
    p = policy_from_environment()
    assert (p.prefetch, p.trim_heap_bytes, p.big_first, p.chunk_elements) == (
        4,
        None,
        False,
        4 << 20,
    )


@pytest.mark.parametrize(
    "raw, message",
    [
        ('{"prefech": 4}', "unknown engine policy field 'prefech'. Did you mean 'prefetch'?"),
        ('{"prefetch": -1}', "prefetch must be an integer of at least 0"),
        ('{"read_threads": 0}', "read_threads must be an integer of at least 1"),
        ('{"chunk_elements": 1.5}', "chunk_elements must be an integer"),
        ('{"writeback": 1}', "writeback must be true or false"),
        ('{"prefetch": null}', "prefetch cannot be null"),
        ('{"big_share": 0}', "big_share must be a positive number"),
        ("[1]", "must be a JSON object"),
        ("{prefetch: 1}", "is not valid JSON"),
    ],
)
def test_bad_overrides_are_named(monkeypatch: pytest.MonkeyPatch, raw: str, message: str) -> None:
    monkeypatch.setenv(POLICY_ENV, raw)
    with pytest.raises(MeldError) as info:
        policy_from_environment()
    assert message in info.value.message


def test_cli_reports_a_bad_policy(
    monkeypatch: pytest.MonkeyPatch, llama_family, tmp_path, capsys
) -> None:
    from meldkit.cli.main import main

    base, (a, b) = llama_family
    recipe = tmp_path / "r.yml"
    recipe.write_text(
        f"merge_method: linear\nmodels: [{{model: {a}, parameters: {{weight: 0.5}}}}, "
        f"{{model: {b}, parameters: {{weight: 0.5}}}}]\n"
    )
    monkeypatch.setenv(POLICY_ENV, '{"threads": 2}')
    assert main(["merge", str(recipe), str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: unknown engine policy field 'threads'")
        and "hint: fields: prefetch" in err
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method", ["linear", "ties"])
def test_no_knob_changes_the_output(llama_family, tmp_path, method: str) -> None:
    base, (a, b) = llama_family
    models = f"models: [{{model: {a}, parameters: {{weight: 0.3}}}}, {{model: {b}, parameters: {{weight: 0.7}}}}]\n"
    head = {"linear": "", "ties": f"base_model: {base}\nparameters: {{density: 0.5}}\n"}[method]
    recipe = f"merge_method: {method}\n{head}{models}"
    run_merge(recipe, tmp_path / "default", quiet=True)
    unusual = EnginePolicy(
        prefetch=0,
        read_ahead_bytes=0,
        read_ahead_whole_tensor_bytes=0,
        chunk_elements=50,
        read_threads=2,
        write_threads=3,
        write_backlog=0,
        big_first=False,
        trim_heap_bytes=0,
        map_min_bytes=1,
        writeback=False,
        hash_chunk_bytes=7,
    )
    run_merge(recipe, tmp_path / "unusual", quiet=True, policy=unusual)
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "default" / name).read_bytes() == (
            tmp_path / "unusual" / name
        ).read_bytes()
