"""Model references to local folders: existing folders as they are, hub ids via the cache.

Compared with MergeKit's download (``tokenizer.model``, ``*.json``, ``*.safetensors``), the
allow-list here names every file a merge reads: config, every tokenizer file (``merges.txt``,
``vocab.txt`` and ``chat_template.jinja`` included), and the weights, safetensors only unless
the repository has none. Weights in sub-folders (e.g. ``onnx/``, ``original/``) are skipped:
the merge never reads them.

Offline (``HF_HUB_OFFLINE``, ``offline=True``, or an unreachable hub) resolves from the local
cache only; a model that is not cached is an :class:`InputError` with a hint.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from meldkit.errors import InputError

__all__ = [
    "CONFIG_FILES",
    "TOKENIZER_FILE_PATTERNS",
    "SAFETENSORS_PATTERNS",
    "PICKLE_PATTERNS",
    "ADAPTER_PATTERNS",
    "looks_like_hub_id",
    "is_offline",
    "resolve_model_folder",
]

HF_HINT = "install the Hugging Face extras: pip install 'meldkit[hf]'"

CONFIG_FILES: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    # tag-along files of vision-language models, copied to the output
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
)
TOKENIZER_FILE_PATTERNS: tuple[str, ...] = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "merges.txt",
    "vocab.json",
    "vocab.txt",
    "chat_template.jinja",
    "chat_template.json",
    "chat_templates/*.jinja",
)
SAFETENSORS_PATTERNS: tuple[str, ...] = ("*.safetensors", "*.safetensors.index.json")
PICKLE_PATTERNS: tuple[str, ...] = ("pytorch_model*.bin", "pytorch_model*.bin.index.json")
ADAPTER_PATTERNS: tuple[str, ...] = ("adapter_config.json", "adapter_model.safetensors")
_ADAPTER_PICKLE: tuple[str, ...] = ("adapter_model.bin",)
# fnmatch's '*' crosses '/', so weights in sub-folders are excluded explicitly.
_IGNORE = ["*/*.safetensors", "*/*.bin", "*/*.index.json", "*/*.pt", "*/*.pth"]

_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")
_TRUE = {"1", "true", "yes", "on", "y", "t"}


def looks_like_hub_id(path: str) -> bool:
    """Whether ``path`` has the form of a hub id (``name`` or ``org/name``) rather than a file
    path: no leading ``.``, ``/`` or ``~``, no ``..`` or ``--``, at most one ``/``."""
    if not _HUB_ID.match(path):
        return False
    return ".." not in path and "--" not in path and not path.endswith(".")


def is_offline() -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub reads it, checked at call time (tests and CLIs set
    it after import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def _has_any(folder: Path, suffix: str) -> bool:
    return any(p.name.endswith(suffix) for p in folder.iterdir())


def _download(
    hub: Any, repo: str, revision: str | None, patterns: list[str], **kwargs: Any
) -> Path:
    return Path(
        hub.snapshot_download(
            repo, revision=revision, allow_patterns=patterns, ignore_patterns=_IGNORE, **kwargs
        )
    )


def _list_files(hub: Any, repo: str, revision: str | None) -> list[str] | None:
    """The repository's file names, or None when the listing fails (no network: the download
    step then falls back to the cache and reports any real error).

    ``model_info`` is one request, as snapshot_download makes; ``list_repo_files`` would retry
    a dead connection with back-off for about 20 seconds.
    """
    try:
        info = hub.model_info(repo, revision=revision)
        return [str(s.rfilename) for s in info.siblings or []]
    except Exception:  # any failure just means "plan without the listing"
        return None


def _weight_patterns(files: list[str]) -> list[str]:
    """Which top-level weight files to fetch: safetensors when there are any, skipping
    Mistral's ``consolidated*.safetensors`` duplicate when HF-style shards exist (it would
    double the download); pickled ``pytorch_model*.bin`` only without safetensors."""
    top = [f for f in files if "/" not in f]
    safetensors = [f for f in top if f.endswith(".safetensors")]
    if safetensors:
        preferred = [f for f in safetensors if not f.startswith("consolidated")] or safetensors
        return [*preferred, "*.safetensors.index.json"]
    return list(PICKLE_PATTERNS)


def _hub_error(exc: Exception, ref: str, offline: bool) -> InputError:
    from huggingface_hub import errors

    name = type(exc).__name__
    if isinstance(exc, getattr(errors, "GatedRepoError", ())):
        return InputError(
            f"model '{ref}' is gated on the Hugging Face hub",
            hint="accept its licence on the model page and log in (hf auth login), or give a local folder",
        )
    if isinstance(exc, getattr(errors, "RevisionNotFoundError", ())):
        return InputError(
            f"model '{ref}': revision not found on the Hugging Face hub",
            hint="check the part after '@' (a branch, tag or commit)",
        )
    if isinstance(exc, getattr(errors, "RepositoryNotFoundError", ())):
        return InputError(
            f"model '{ref}' is neither a local folder nor a model on the Hugging Face hub",
            hint="check the path or hub id; private models need `hf auth login`",
        )
    if isinstance(exc, getattr(errors, "LocalEntryNotFoundError", ())) or offline:
        why = "offline mode is on" if offline else "the hub cannot be reached"
        return InputError(
            f"model '{ref}' is not in the local Hugging Face cache and {why}",
            hint="download it first (or unset HF_HUB_OFFLINE), pass --transformers-cache if it "
            "is cached elsewhere, or give a local folder",
        )
    return InputError(
        f"model '{ref}': download from the Hugging Face hub failed ({name}: {exc})",
        hint="check the network and the hub id, or give a local folder",
    )


def resolve_model_folder(
    path: str,
    revision: str | None = None,
    *,
    cache_dir: str | None = None,
    offline: bool | None = None,
    kind: Literal["model", "lora"] = "model",
) -> Path:
    """A local folder holding ``path``'s files.

    An existing local folder is returned as is (``revision`` is ignored for it). Otherwise
    ``path`` must look like a hub id; it is fetched with ``snapshot_download`` into
    ``cache_dir`` (default: the Hugging Face cache), or only looked up there when
    ``offline`` (default: ``HF_HUB_OFFLINE``). ``kind="lora"`` fetches a PEFT adapter.
    """
    local = Path(os.path.expanduser(path))
    if local.is_dir():
        return local
    ref = f"{path}@{revision}" if revision else path
    if local.exists():
        raise InputError(f"model '{ref}' is a file, not a folder", hint="give the model's folder")
    if not looks_like_hub_id(path):
        raise InputError(
            f"model folder '{path}' does not exist",
            hint="check the path (hub ids look like org/name)",
        )
    try:
        import huggingface_hub as hub
    except ImportError:
        raise InputError(
            f"model '{ref}' is not a local folder and huggingface_hub is not installed",
            hint=HF_HINT + ", or download the model and give its folder",
        ) from None
    offline = is_offline() if offline is None else offline
    kwargs: dict[str, Any] = {"cache_dir": cache_dir, "local_files_only": offline}
    if kind == "lora":
        files, weights, fallback = [], list(ADAPTER_PATTERNS), list(_ADAPTER_PICKLE)
        weight_suffix = "adapter_model.safetensors"
    else:
        files, weights = [*CONFIG_FILES, *TOKENIZER_FILE_PATTERNS], list(SAFETENSORS_PATTERNS)
        fallback, weight_suffix = list(PICKLE_PATTERNS), ".safetensors"
    # Online, list the repository first so that one download fetches exactly the weight files
    # needed; without a listing (offline, no network), try safetensors, then pickles.
    listed = None if offline or kind == "lora" else _list_files(hub, path, revision)
    try:
        if listed is not None:
            folder = _download(hub, path, revision, [*files, *_weight_patterns(listed)], **kwargs)
        else:
            folder = _download(hub, path, revision, [*files, *weights], **kwargs)
            if not offline and not _has_any(folder, weight_suffix):
                folder = _download(hub, path, revision, [*files, *weights, *fallback], **kwargs)
    except Exception as exc:  # huggingface_hub raises HTTP, OS and its own error types
        raise _hub_error(exc, ref, offline) from None
    if not folder.is_dir():
        raise InputError(f"model '{ref}': the hub download gave no folder ({folder})")
    return folder
