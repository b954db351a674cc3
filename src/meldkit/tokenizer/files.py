"""Tokenizer files on disk: reading a model's tokenizer, copying or writing the output's.

Two output paths, as in MergeKit:

* :func:`copy_tokenizer_files`: no ``tokenizer:`` setting; the donor's files are copied
  verbatim (plus, unlike MergeKit, ``vocab.txt`` and extra ``chat_templates/``), and a chosen
  chat template is written where transformers reads it.
* :func:`save_tokenizer`: a vocabulary was built; writes ``tokenizer.json``,
  ``tokenizer_config.json`` and ``special_tokens_map.json`` consistent with it. Slow-tokenizer
  files (``tokenizer.model``, ``merges.txt``, ``vocab.json``...) are kept only when the
  vocabulary is the donor's unchanged; otherwise they would disagree with ``tokenizer.json``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meldkit.errors import InputError, OutputError
from meldkit.tokenizer.tokenizer_json import HF_HINT

if TYPE_CHECKING:
    from meldkit.tokenizer.vocab import OutputVocabulary

__all__ = [
    "TOKENIZER_FILES",
    "SLOW_TOKENIZER_FILES",
    "MERGEKIT_EXTRA_FILES",
    "has_tokenizer",
    "load_tokenizer_json",
    "read_tokenizer_text",
    "copy_tokenizer_files",
    "save_tokenizer",
    "write_chat_template",
]

log = logging.getLogger(__name__)

# Files copied verbatim from a donor (MergeKit's list plus vocab.txt; generation_config.json is
# the engine's business, it belongs to the model config rather than the tokenizer).
TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer.model",
    "added_tokens.json",
    "merges.txt",
    "vocab.json",
    "vocab.txt",
    "chat_template.jinja",
    "chat_template.json",
)
# Non-tokenizer files MergeKit's verbatim copy path also copies from the donor.
MERGEKIT_EXTRA_FILES: tuple[str, ...] = ("generation_config.json", "video_preprocessor_config.json")
# Files that describe the vocabulary itself, valid only while it is unchanged.
SLOW_TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.model",
    "merges.txt",
    "vocab.json",
    "vocab.txt",
    "added_tokens.json",
)
_SPECIAL_KEYS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
_LIST_KEYS = ("additional_special_tokens", "extra_special_tokens")
# tokenizer_config.json keys that name files we may not write.
_FILE_KEYS = (
    "vocab_file",
    "merges_file",
    "tokenizer_file",
    "added_tokens_file",
    "special_tokens_map_file",
)


def has_tokenizer(folder: Path) -> bool:
    """Whether ``folder`` holds a tokenizer (fast or slow files)."""
    folder = Path(folder)
    return any((folder / n).is_file() for n in ("tokenizer.json", *SLOW_TOKENIZER_FILES[:4]))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(
            f"cannot read {path}: {exc}", hint="the file is corrupt; replace it"
        ) from None


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_tokenizer_text(folder: Path) -> str | None:
    """The text of a model folder's fast-tokenizer document, or None when it has no tokenizer.

    ``tokenizer.json`` is read directly. A folder with only slow-tokenizer files is converted
    by transformers (``trust_remote_code=False``: no code from the folder ever runs).
    """
    folder = Path(folder)
    path = folder / "tokenizer.json"
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(
                f"cannot read {path}: {exc}", hint="the file is corrupt; replace it"
            ) from None
    if not has_tokenizer(folder):
        return None
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise InputError(
            f"{folder}: converting a slow tokenizer (tokenizer.model / vocab files) needs transformers",
            hint=HF_HINT,
        ) from None
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as exc:  # transformers raises many unrelated types here
        raise InputError(
            f"{folder}: transformers cannot load the tokenizer ({type(exc).__name__}: {exc})",
            hint="add a tokenizer.json (fast tokenizer) to the model folder",
        ) from None
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise InputError(
            f"{folder}: the tokenizer has no fast (tokenizers) form",
            hint="add a tokenizer.json to the model folder",
        )
    return str(backend.to_str())


def load_tokenizer_json(folder: Path) -> dict[str, Any] | None:
    """:func:`read_tokenizer_text`, parsed; None when the folder has no tokenizer."""
    text = read_tokenizer_text(folder)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{folder}: tokenizer.json is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or "model" not in data:
        raise InputError(f"{folder}: tokenizer.json is not a tokenizers document (no 'model')")
    return data


def write_chat_template(out_dir: Path, template: str) -> None:
    """Install ``template`` in a tokenizer folder.

    transformers >= 4.50 reads ``chat_template.jinja`` first; older versions read the
    ``chat_template`` key of ``tokenizer_config.json``. Both get the same text, and a
    processor's ``chat_template.json`` is updated when present, so no reader sees a stale one.
    """
    out_dir = Path(out_dir)
    (out_dir / "chat_template.jinja").write_text(template, encoding="utf-8")
    config_path = out_dir / "tokenizer_config.json"
    if config_path.is_file():
        config = _read_json(config_path)
        if isinstance(config, dict):
            config["chat_template"] = template
            _write_json(config_path, config)
    processor_path = out_dir / "chat_template.json"
    if processor_path.is_file():
        _write_json(processor_path, {"chat_template": template})


def _prepare_out(out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out_dir}: {exc}") from None
    return out_dir


def copy_tokenizer_files(
    donor_folder: Path,
    out_dir: Path,
    chat_template: str | None = None,
    extra_files: tuple[str, ...] = (),
) -> list[Path]:
    """Copy the donor's tokenizer files verbatim; returns the files written.

    With ``chat_template`` the copied template files are replaced by it (see
    :func:`write_chat_template`) and the donor's extra ``chat_templates/`` are not copied, so
    the chosen template is the only one. ``extra_files`` are copied too when present; pass
    :data:`MERGEKIT_EXTRA_FILES` to copy exactly what MergeKit's copy path copies. A donor
    without a tokenizer copies nothing.
    """
    donor = Path(donor_folder)
    out_dir = _prepare_out(out_dir)
    written: list[Path] = []
    for name in (*TOKENIZER_FILES, *extra_files):
        src = donor / name
        if src.is_file():
            shutil.copyfile(src, out_dir / name)
            written.append(out_dir / name)
    extra = donor / "chat_templates"
    if chat_template is None and extra.is_dir():
        for src in sorted(extra.glob("*.jinja")):
            (out_dir / "chat_templates").mkdir(exist_ok=True)
            shutil.copyfile(src, out_dir / "chat_templates" / src.name)
            written.append(out_dir / "chat_templates" / src.name)
    if not written:
        log.warning("no tokenizer files found in %s; the output has no tokenizer", donor)
    if chat_template is not None:
        write_chat_template(out_dir, chat_template)
        if out_dir / "chat_template.jinja" not in written:
            written.append(out_dir / "chat_template.jinja")
    return written


def _token_content(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def _drop_missing_specials(data: dict[str, Any], vocab: set[str], where: str) -> dict[str, Any]:
    """Unset special tokens that the output vocabulary lost; transformers would otherwise add
    them back as new tokens at load time, making the tokenizer longer than the embeddings."""
    out = dict(data)
    for key in _SPECIAL_KEYS:
        content = _token_content(out.get(key))
        if content is not None and content not in vocab:
            log.warning("%s: %s %r is not in the output vocabulary; unset", where, key, content)
            out[key] = None
    for key in _LIST_KEYS:
        value = out.get(key)
        if isinstance(value, list):
            out[key] = [v for v in value if _token_content(v) is None or _token_content(v) in vocab]
    return out


def save_tokenizer(
    vocab: OutputVocabulary, out_dir: Path, chat_template: str | None = None
) -> list[Path]:
    """Write the tokenizer of a built vocabulary to ``out_dir``; returns the files written.

    ``chat_template`` (already resolved, see :func:`resolve_chat_template`) replaces the donor's.
    """
    out_dir = _prepare_out(out_dir)
    donor = vocab.donor_folder
    if not vocab.changed and (donor / "tokenizer_config.json").is_file():
        # Same vocabulary as the donor: its files, slow ones included, are still exact.
        written = copy_tokenizer_files(donor, out_dir, chat_template)
        if not (out_dir / "tokenizer.json").is_file():
            _write_json(out_dir / "tokenizer.json", vocab.tokenizer_json)
            written.append(out_dir / "tokenizer.json")
        return written

    tokens = {t for t in vocab.tokens if t is not None}
    _write_json(out_dir / "tokenizer.json", vocab.tokenizer_json)

    config_path = donor / "tokenizer_config.json"
    config: dict[str, Any] = {}
    if config_path.is_file():
        loaded = _read_json(config_path)
        config = loaded if isinstance(loaded, dict) else {}
    for key in _FILE_KEYS:
        config.pop(key, None)
    if "added_tokens_decoder" in config:
        # transformers re-adds every entry listed here, so it must match tokenizer.json exactly.
        config["added_tokens_decoder"] = {
            str(e["id"]): {
                k: e[k]
                for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")
            }
            for e in vocab.tokenizer_json.get("added_tokens", [])
        }
    config = _drop_missing_specials(config, tokens, str(config_path))
    if chat_template is not None:
        config["chat_template"] = chat_template
    _write_json(out_dir / "tokenizer_config.json", config)

    map_path = donor / "special_tokens_map.json"
    if map_path.is_file():
        loaded = _read_json(map_path)
        special_map = loaded if isinstance(loaded, dict) else {}
    else:
        special_map = {
            k: config[k] for k in (*_SPECIAL_KEYS, *_LIST_KEYS[:1]) if config.get(k) is not None
        }
    special_map = {
        k: v
        for k, v in _drop_missing_specials(special_map, tokens, str(map_path)).items()
        if v is not None
    }
    _write_json(out_dir / "special_tokens_map.json", special_map)
    written = [
        out_dir / "tokenizer.json",
        out_dir / "tokenizer_config.json",
        out_dir / "special_tokens_map.json",
    ]

    if chat_template is not None:
        write_chat_template(out_dir, chat_template)
        written.append(out_dir / "chat_template.jinja")
    else:
        for name in ("chat_template.jinja", "chat_template.json"):
            if (donor / name).is_file():
                shutil.copyfile(donor / name, out_dir / name)
                written.append(out_dir / name)
    return written
