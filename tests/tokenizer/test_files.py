"""save_tokenizer / copy_tokenizer_files: complete, loadable output folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meldkit.config.schema import TokenizerConfig
from meldkit.tokenizer import (
    VocabModel,
    build_vocabulary,
    copy_tokenizer_files,
    load_tokenizer_json,
    resolve_chat_template,
    save_tokenizer,
)
from meldkit.tokenizer.files import MERGEKIT_EXTRA_FILES, TOKENIZER_FILES
from tests.tokenizer.helpers import make_tokenizer_folder


def _slow_files(folder: Path) -> None:
    """Stand-ins for slow-tokenizer files (only copied, never parsed, on the verbatim path)."""
    (folder / "tokenizer.model").write_bytes(b"\x00sentencepiece")
    (folder / "merges.txt").write_text("#version: 0.2\n")


def test_union_saved_and_loadable(vocab_models, tok_models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer

    _slow_files(tok_models["base"])
    v = build_vocabulary(TokenizerConfig(source="union"), vocab_models, str(tok_models["base"]))
    out = tmp_path / "out"
    written = save_tokenizer(v, out)
    assert {p.name for p in written} == {
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    }
    assert not (out / "tokenizer.model").exists() and not (out / "merges.txt").exists()  # stale now
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.get_vocab_size(with_added_tokens=True) == 66
    assert tok.token_to_id("<|im_end|>") == 65
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert sorted(int(i) for i in config["added_tokens_decoder"]) == [0, 1, 2, 64, 65]
    assert config["bos_token"] == "<s>"
    assert json.loads((out / "special_tokens_map.json").read_text())["eos_token"] == "</s>"

    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(out))
    assert len(hf) == 66
    assert hf.convert_tokens_to_ids(["<|im_start|>", "tok_7"]) == [64, 7]


def test_unchanged_vocabulary_copies_verbatim(vocab_models, tok_models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _slow_files(tok_models["base"])
    v = build_vocabulary(TokenizerConfig(source="base"), vocab_models, str(tok_models["base"]))
    out = tmp_path / "out"
    save_tokenizer(v, out)
    for name in (
        "tokenizer.json",
        "tokenizer.model",
        "merges.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ):
        assert (out / name).read_bytes() == (tok_models["base"] / name).read_bytes(), name


def test_model_source_donor_files(vocab_models, tok_models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from meldkit.config.modelref import ModelPath, ModelRef

    cfg = TokenizerConfig(source=ModelRef(ModelPath(str(tok_models["chatml"]))))
    v = build_vocabulary(cfg, vocab_models, str(tok_models["base"]))
    save_tokenizer(v, tmp_path / "out", chat_template=resolve_chat_template("chatml", []))
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (
        tok_models["chatml"] / "tokenizer.json"
    ).read_bytes()
    template = (tmp_path / "out" / "chat_template.jinja").read_text()
    assert "<|im_start|>" in template
    assert (
        json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())["chat_template"]
        == template
    )


def test_missing_special_token_unset(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    folder = make_tokenizer_folder(tmp_path / "p", added=("<pad>",), model_vocab_size=64)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["pad_token"] = "<pad>"
    config["additional_special_tokens"] = ["<pad>", "<s>"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    v = build_vocabulary(TokenizerConfig(source="base"), [VocabModel("p", folder, 64)], "p")
    save_tokenizer(v, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert saved["pad_token"] is None and saved["additional_special_tokens"] == ["<s>"]
    assert "64" not in saved["added_tokens_decoder"]
    assert "pad_token" in caplog.text


def test_literal_template_saved_verbatim(vocab_models, tok_models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    literal = "{% for m in messages %}{{ m['content'] }}|{% endfor %}"
    v = build_vocabulary(TokenizerConfig(source="union"), vocab_models, str(tok_models["base"]))
    save_tokenizer(v, tmp_path / "out", chat_template=resolve_chat_template(literal, []))
    assert (tmp_path / "out" / "chat_template.jinja").read_text() == literal
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert hf.chat_template == literal
    assert hf.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "hi|"


def test_copy_tokenizer_files(tmp_path: Path) -> None:
    donor = make_tokenizer_folder(tmp_path / "donor", chat_template="{{ 'old template text' }}")
    _slow_files(donor)
    for name in ("added_tokens.json", "vocab.json", "vocab.txt"):
        (donor / name).write_text("{}")
    (donor / "chat_template.jinja").write_text("{{ 'old jinja template' }}")
    (donor / "chat_template.json").write_text(
        json.dumps({"chat_template": "{{ 'old processor' }}"})
    )
    (donor / "chat_templates").mkdir()
    (donor / "chat_templates" / "tool_use.jinja").write_text("{{ 'tools' }}")
    (donor / "model.safetensors").write_text("not a tokenizer file")

    out = tmp_path / "plain"
    written = copy_tokenizer_files(donor, out)
    assert {p.name for p in written} == set(TOKENIZER_FILES) | {"tool_use.jinja"}
    for name in TOKENIZER_FILES:
        assert (out / name).read_bytes() == (donor / name).read_bytes()
    assert not (out / "model.safetensors").exists()
    assert not (out / "generation_config.json").exists()
    (donor / "generation_config.json").write_text("{}")
    copy_tokenizer_files(donor, out, extra_files=MERGEKIT_EXTRA_FILES)
    assert (out / "generation_config.json").is_file()

    out2 = tmp_path / "templated"
    new = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
    copy_tokenizer_files(donor, out2, chat_template=new)
    assert (out2 / "chat_template.jinja").read_text() == new
    assert json.loads((out2 / "tokenizer_config.json").read_text())["chat_template"] == new
    assert json.loads((out2 / "chat_template.json").read_text()) == {"chat_template": new}
    assert not (out2 / "chat_templates").exists()
    assert (out2 / "tokenizer.json").read_bytes() == (donor / "tokenizer.json").read_bytes()

    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(out2))
    assert hf.chat_template == new


def test_copy_without_tokenizer(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "empty").mkdir()
    assert copy_tokenizer_files(tmp_path / "empty", tmp_path / "out") == []
    assert "no tokenizer files" in caplog.text


def test_slow_tokenizer_converted(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "vocab.json").write_text(
        json.dumps({"<|endoftext|>": 0, "a": 1, "b": 2, "ab": 3, "c": 4})
    )
    (slow / "merges.txt").write_text("#version: 0.2\na b\n")
    (slow / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "GPT2Tokenizer",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
            }
        )
    )
    data = load_tokenizer_json(slow)
    assert data is not None and data["model"]["type"] == "BPE"
    v = build_vocabulary(TokenizerConfig(source="base"), [VocabModel("s", slow, 4)], "s")
    assert v.tokens == ["<|endoftext|>", "a", "b", "ab"] and v.changed
    save_tokenizer(v, tmp_path / "out")
    assert not (tmp_path / "out" / "merges.txt").exists()
    assert json.loads((tmp_path / "out" / "tokenizer.json").read_text())["model"]["merges"] == [
        ["a", "b"]
    ]


def test_no_tokenizer_setting_keeps_base(tok_models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """MergeKit's test: without tokenizer_source the output tokenizer is the base's (64, 3 added)."""
    from tokenizers import Tokenizer

    copy_tokenizer_files(tok_models["base"], tmp_path / "out")
    tok = Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))
    assert tok.get_vocab_size(with_added_tokens=True) == 64
    assert len(json.loads((tmp_path / "out" / "tokenizer.json").read_text())["added_tokens"]) == 3
