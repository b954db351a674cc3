"""Running chains: the final weights equal the stages run by hand, the cache re-runs only what
changed, and ``--no-intermediates`` gives the same bytes without writing the intermediates."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from meldkit.cli.main import main
from meldkit.errors import OutputError
from meldkit.multi import ChainOptions, run_chain
from meldkit.testing import read_model
from tests.multi.conftest import FINAL, chain_text, stage_ab, stage_c


def _run(recipe: Path, tmp: Path, **kw: object) -> object:
    from meldkit.execute.runner import RunOptions

    options = ChainOptions(tmp / "inter", tmp / "out", **kw)  # type: ignore[arg-type]
    return run_chain(recipe, options, RunOptions(quiet=True, overwrite=True))


def _same(a: Path, b: Path) -> None:
    ta, tb = read_model(a), read_model(b)
    assert ta.keys() == tb.keys()
    for name in ta:
        assert torch.equal(ta[name], tb[name]), name


def test_the_chain_equals_its_stages_run_by_hand(
    tmp_path: Path, chain_file: Path, family: dict[str, Path]
) -> None:
    result = _run(chain_file, tmp_path)
    assert result.executed == ["ab", "c", "final"]  # type: ignore[attr-defined]
    by_hand = tmp_path / "by-hand"
    by_hand.mkdir()
    for name, text in (("ab", stage_ab(family)), ("c", stage_c(family))):
        (by_hand / f"{name}.yaml").write_text(text)
        assert main(["merge", str(by_hand / f"{name}.yaml"), str(by_hand / name), "--quiet"]) == 0
    final = FINAL.replace("ab", str(by_hand / "ab")).replace("model: c", f"model: {by_hand / 'c'}")
    (by_hand / "final.yaml").write_text(final)
    assert main(["merge", str(by_hand / "final.yaml"), str(by_hand / "final"), "--quiet"]) == 0
    _same(tmp_path / "out", by_hand / "final")
    _same(tmp_path / "inter" / "ab", by_hand / "ab")
    # And the values are the formulas': ab is the plain mean of ft1 and ft2.
    ab, ft1, ft2 = (read_model(p) for p in (by_hand / "ab", family["ft1"], family["ft2"]))
    name = "model.layers.0.mlp.down_proj.weight"
    assert torch.allclose(ab[name].float(), (ft1[name] + ft2[name]) / 2, atol=1e-6)


def test_the_cache_reruns_only_the_edited_stage_and_its_dependants(
    tmp_path: Path, chain_file: Path, family: dict[str, Path]
) -> None:
    first = _run(chain_file, tmp_path)
    assert first.executed == ["ab", "c", "final"]  # type: ignore[attr-defined]
    again = _run(chain_file, tmp_path)
    assert (again.executed, again.cached) == (["final"], ["ab", "c"])  # type: ignore[attr-defined]
    chain_file.write_text(chain_text(family, c_weight=0.6))
    edited = _run(chain_file, tmp_path)
    assert (edited.executed, edited.cached) == (["c", "final"], ["ab"])  # type: ignore[attr-defined]
    # A changed input (ft1 rewritten, same shapes) re-runs the stage that reads it.
    weights = family["ft1"] / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    touched = _run(chain_file, tmp_path)
    assert (touched.executed, touched.cached) == (["ab", "final"], ["c"])  # type: ignore[attr-defined]
    # A removed shard invalidates the record; --no-lazy merges everything again.
    (tmp_path / "inter" / "c" / "model.safetensors").unlink()
    assert _run(chain_file, tmp_path).executed == ["c", "final"]  # type: ignore[attr-defined]
    assert _run(chain_file, tmp_path, lazy=False).executed == ["ab", "c", "final"]  # type: ignore[attr-defined]


STACK = (
    "merge_method: passthrough\nslices:\n"
    "  - sources: [{model: ab, layer_range: [0, 2]}]\n"
    "  - sources: [{model: c, layer_range: [1, 2]}]\n"
)


@pytest.mark.parametrize("final", [FINAL, STACK], ids=["slerp", "stacked-slices"])
def test_no_intermediates_gives_the_same_bytes(
    tmp_path: Path, family: dict[str, Path], final: str
) -> None:
    chain_file = tmp_path / "chain.yaml"
    chain_file.write_text("---\n".join([stage_ab(family), stage_c(family), final]))
    _run(chain_file, tmp_path / "written")
    streamed = _run(chain_file, tmp_path / "streamed", stream=True)
    assert streamed.executed == ["final"]  # type: ignore[attr-defined]
    # Each intermediate tensor the final stage reads is merged once: all 21 of each for slerp;
    # for the stack, ab's embeddings and 2 layers of 9 tensors (the first slice) and c's layer 1
    # with the final norm and LM head (which come from the last slice, as in MergeKit).
    expected = {"ab": 21, "c": 21} if final is FINAL else {"ab": 1 + 2 * 9, "c": 9 + 2}
    assert streamed.streamed == expected  # type: ignore[attr-defined]
    assert os.listdir(tmp_path / "streamed" / "inter") == []
    for name in ("model.safetensors", "config.json"):
        written = (tmp_path / "written" / "out" / name).read_bytes()
        assert (tmp_path / "streamed" / "out" / name).read_bytes() == written


def test_an_intermediate_read_twice_is_written(
    tmp_path: Path, family: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "franken.yaml"
    recipe.write_text(
        stage_ab(family)
        + "---\nmerge_method: passthrough\nslices:\n"
        + "  - sources: [{model: ab, layer_range: [0, 2]}]\n"
        + "  - sources: [{model: ab, layer_range: [1, 2]}]\n"
    )
    out, inter = tmp_path / "out", tmp_path / "inter"
    args = ["multi", str(recipe), "--out", str(out), "-I", str(inter), "--no-intermediates"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert (
        "note: stage 'ab' is written: later stages read its tensor "
        "model.layers.1.input_layernorm.weight 2 times, and streaming would merge it 2 times"
    ) in err
    assert (inter / "ab" / "model.safetensors").is_file()
    assert len([k for k in read_model(out) if ".layers." in k and "q_proj" in k]) == 3


def test_the_final_output_is_checked_before_any_stage_runs(
    tmp_path: Path, chain_file: Path
) -> None:
    from meldkit.execute.runner import RunOptions

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    options = ChainOptions(tmp_path / "inter", tmp_path / "out")
    with pytest.raises(OutputError) as info:
        run_chain(chain_file, options, RunOptions(quiet=True))
    assert info.value.message == f"output folder {tmp_path / 'out'} already exists and is not empty"
    assert not (tmp_path / "inter" / "ab").exists()
