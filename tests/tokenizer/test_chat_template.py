"""Chat templates: auto / built-in / literal resolution, and built-ins rendered by transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meldkit.errors import RecipeError
from meldkit.tokenizer import (
    BUILTIN_TEMPLATES,
    builtin_template,
    read_chat_template,
    resolve_chat_template,
)
from tests.tokenizer.helpers import make_tokenizer_folder

CONVERSATION = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "U1"},
    {"role": "assistant", "content": "A1"},
    {"role": "user", "content": "U2"},
]
EXPECTED = {
    "chatml": "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU1<|im_end|>\n"
    "<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nU2<|im_end|>\n<|im_start|>assistant\n",
    "llama3": "<s><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nU1<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nA1<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nU2<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "mistral": "<s>[INST] S\n\nU1 [/INST] A1</s>[INST] U2 [/INST]",
    "alpaca": "S\n\n### Instruction:\nU1\n\n### Response:\nA1</s>\n\n### Instruction:\nU2\n\n### Response:\n",
    "exaone": "[|system|]S[|endofturn|]\n[|user|]U1\n[|assistant|]A1[|endofturn|]\n[|user|]U2\n[|assistant|]",
}


@pytest.mark.parametrize("name", BUILTIN_TEMPLATES)
def test_builtin_renders_with_transformers(name: str, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("jinja2")
    folder = make_tokenizer_folder(tmp_path / "tok")
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    template = resolve_chat_template(name, [])
    assert template == builtin_template(name)
    add_prompt = name != "mistral"  # mistral has no generation prompt: [/INST] ends the turn
    text = tok.apply_chat_template(
        CONVERSATION, chat_template=template, tokenize=False, add_generation_prompt=add_prompt
    )
    assert text == EXPECTED[name]


def test_exaone_without_system(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(make_tokenizer_folder(tmp_path / "tok")))
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}],
        chat_template=builtin_template("exaone"),
        tokenize=False,
    )
    assert text == "[|system|][|endofturn|]\n[|user|]hi\n"


def test_literal_and_invalid() -> None:
    literal = "{% for m in messages %}{{ m.content }}{% endfor %}"
    assert resolve_chat_template(literal, []) == literal
    assert resolve_chat_template(None, []) is None
    with pytest.raises(RecipeError, match="invalid chat template") as err:
        resolve_chat_template("chatlm", [])
    assert "chatml" in err.value.message
    with pytest.raises(RecipeError, match="invalid chat template"):
        resolve_chat_template("{{ short }}", [])  # has '{' but under 20 characters
    with pytest.raises(RecipeError, match="invalid chat template"):
        resolve_chat_template("a long string without any braces at all", [])
    with pytest.raises(RecipeError, match="unknown built-in"):
        builtin_template("nope")


def test_auto_most_common_first_on_tie(tmp_path: Path) -> None:
    ta, tb = "{{ 'template A......' }}", "{{ 'template B......' }}"
    a = make_tokenizer_folder(tmp_path / "a", chat_template=ta)
    b1 = make_tokenizer_folder(tmp_path / "b1", chat_template=tb)
    b2 = make_tokenizer_folder(tmp_path / "b2", chat_template=tb)
    none = make_tokenizer_folder(tmp_path / "none")
    assert resolve_chat_template("auto", [a, b1, b2, none]) == tb
    assert resolve_chat_template("auto", [a, b1, none]) == ta
    assert resolve_chat_template("auto", [b1, a]) == tb
    assert resolve_chat_template("auto", [none]) is None


def test_read_template_sources(tmp_path: Path) -> None:
    f = make_tokenizer_folder(tmp_path / "f", chat_template="{{ 'from config' }}")
    assert read_chat_template(f) == "{{ 'from config' }}"
    (f / "chat_template.jinja").write_text("{{ 'from jinja file' }}")
    assert read_chat_template(f) == "{{ 'from jinja file' }}"  # the file wins, as in transformers
    multi = make_tokenizer_folder(tmp_path / "m")
    config = json.loads((multi / "tokenizer_config.json").read_text())
    config["chat_template"] = [
        {"name": "tool_use", "template": "T"},
        {"name": "default", "template": "D"},
    ]
    (multi / "tokenizer_config.json").write_text(json.dumps(config))
    assert read_chat_template(multi) == "D"
    proc = tmp_path / "p"
    proc.mkdir()
    (proc / "chat_template.json").write_text(json.dumps({"chat_template": "{{ 'processor' }}"}))
    assert read_chat_template(proc) == "{{ 'processor' }}"
    (proc / "tokenizer_config.json").write_text("not json")
    assert read_chat_template(proc) == "{{ 'processor' }}"
