"""Model references to local folders: existing folders as they are, hub ids via the cache.

Compared with MergeKit's download (``tokenizer.model``, ``*.json``, ``*.safetensors``), the
allow-list here names every file a merge reads: config, every tokenizer file (``merges.txt``,
``vocab.txt`` and ``chat_template.jinja`` included), and the weights, safetensors only unless
the repository has none. Weights in sub-folders (e.g. ``onnx/``, ``original/``) are skipped:
the merge never reads them.

Offline (``HF_HUB_OFFLINE``, ``offline=True``, or an unreachable hub) resolves from the local
cache only. A reference that is neither a local folder nor found this way is one
:class:`InputError`: first that no local folder of that name exists (see
:mod:`meldkit.io.locate`), then what the hub lookup found, worded for the actual state (offline
and which variable says so, unreachable, no such repository, huggingface_hub missing). Names
that cannot be hub ids (``./x``, absolute paths, more than one ``/``) are never looked up.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from meldkit.errors import InputError
from meldkit.io.locate import MissingLocal, describe_missing

__all__ = [
    "CONFIG_FILES",
    "TOKENIZER_FILE_PATTERNS",
    "SAFETENSORS_PATTERNS",
    "PICKLE_PATTERNS",
    "ADAPTER_PATTERNS",
    "looks_like_hub_id",
    "is_offline",
    "offline_reason",
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
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def looks_like_hub_id(path: str) -> bool:
    """Whether ``path`` has the form of a hub id (``name`` or ``org/name``) rather than a file
    path: no leading ``.``, ``/`` or ``~``, no ``..`` or ``--``, at most one ``/``."""
    if not _HUB_ID.match(path):
        return False
    return ".." not in path and "--" not in path and not path.endswith(".")


def _offline_variable() -> str | None:
    """``VAR=value`` for the variable that switches huggingface_hub offline, or None. As the
    hub reads them, the first of HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE that is set decides."""
    for var in _OFFLINE_VARS:
        value = os.environ.get(var, "").strip()
        if value:
            return f"{var}={value}" if value.lower() in _TRUE else None
    return None


def is_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as huggingface_hub reads it, checked at
    call time (tests and CLIs set it after import)."""
    return _offline_variable() is not None


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


def offline_reason(offline: bool | None = None, hub: Any = None) -> str | None:
    """Why the hub is not asked, in words, or None when it is: the variable that switches
    huggingface_hub offline (as set), an explicit ``offline=True``, or a huggingface_hub that
    read the variable when it was imported (it never reads it again)."""
    hub_offline = bool(getattr(getattr(hub, "constants", None), "HF_HUB_OFFLINE", False))
    if offline is False and not hub_offline:
        return None
    variable = _offline_variable()
    if variable is not None:
        return variable
    if offline:
        return "offline=True"
    if hub_offline:
        return "HF_HUB_OFFLINE was set when huggingface_hub was imported"
    return None


def _hub_found(exc: Exception, reason: str | None) -> tuple[str, str]:
    """What the hub lookup found, and how to fix it, for a lookup that found no model."""
    from huggingface_hub import errors

    if isinstance(exc, getattr(errors, "RepositoryNotFoundError", ())):
        return (
            "no such model on the Hugging Face hub",
            "for a hub model, check the id (private models need `hf auth login`)",
        )
    cache = "pass --transformers-cache if it is cached elsewhere"
    if reason is not None:
        var = next((v for v in _OFFLINE_VARS if reason.startswith(v)), None)
        switch = f"unset {var}" if var else "turn offline mode off"
        return (
            f"offline ({reason}) and not in the local cache",
            f"for a hub model, {switch} to download it, or {cache}",
        )
    offline_types = (getattr(errors, "LocalEntryNotFoundError", ()), ConnectionError, TimeoutError)
    if isinstance(exc, offline_types):
        return (
            "not in the local cache and the hub could not be reached",
            f"for a hub model, connect to the network to download it, or {cache}",
        )
    detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return (
        f"the download failed ({type(exc).__name__}{': ' + detail if detail else ''})",
        "for a hub model, check the network and the id",
    )


def _hub_error(exc: Exception, ref: str, reason: str | None, missing: MissingLocal) -> InputError:
    from huggingface_hub import errors

    # The hub knows the repository: the local folder was never what was meant.
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
    found, fix = _hub_found(exc, reason)
    return missing.error(found, fix)


def resolve_model_folder(
    path: str,
    revision: str | None = None,
    *,
    cache_dir: str | None = None,
    offline: bool | None = None,
    kind: Literal["model", "lora"] = "model",
    recipe_dir: Path | None = None,
) -> Path:
    """A local folder holding ``path``'s files.

    An existing local folder is returned as is (``revision`` is ignored for it). Otherwise
    ``path`` must look like a hub id; it is fetched with ``snapshot_download`` into
    ``cache_dir`` (default: the Hugging Face cache), or only looked up there when
    ``offline`` (default: ``HF_HUB_OFFLINE``). ``kind="lora"`` fetches a PEFT adapter.

    When neither exists, one :class:`InputError` says first that no local folder of that name
    exists (resolved against the current directory, with a close sibling or a match beside
    the recipe in ``recipe_dir``), then what the hub lookup found.
    """
    local = Path(os.path.expanduser(path))
    if local.is_dir():
        return local
    ref = f"{path}@{revision}" if revision else path
    what = "LoRA folder" if kind == "lora" else "model folder"
    if local.exists():
        raise InputError(
            f"{what.split()[0]} path '{path}' is a file, not a folder",
            hint="give the folder that holds it"
            + (" (saved by PEFT's save_pretrained)" if kind == "lora" else "")
            + (
                "; `meldkit merge-raw` merges single weight files"
                if kind == "model" and local.suffix in (".safetensors", ".pt", ".pth", ".bin")
                else ""
            ),
        )
    missing = describe_missing(path, kind, recipe_dir, revision)
    if not looks_like_hub_id(path):
        raise missing.error()
    try:
        import huggingface_hub as hub
    except ImportError:
        raise missing.error(
            "huggingface_hub is not installed", "for a hub model, " + HF_HINT
        ) from None
    reason = offline_reason(offline, hub)
    local_only = reason is not None if offline is None else offline
    try:
        return _fetch(hub, path, revision, cache_dir, local_only, kind)
    except InputError:
        raise
    except Exception as exc:  # huggingface_hub raises HTTP, OS and its own error types
        raise _hub_error(exc, ref, reason, missing) from None


def _fetch(
    hub: Any, path: str, revision: str | None, cache_dir: str | None, offline: bool, kind: str
) -> Path:
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
    if listed is not None:
        folder = _download(hub, path, revision, [*files, *_weight_patterns(listed)], **kwargs)
    else:
        folder = _download(hub, path, revision, [*files, *weights], **kwargs)
        if not offline and not _has_any(folder, weight_suffix):
            folder = _download(hub, path, revision, [*files, *weights, *fallback], **kwargs)
    if not folder.is_dir():
        ref = f"{path}@{revision}" if revision else path
        raise InputError(
            f"model '{ref}': the hub download gave no folder ({folder})",
            hint="clear that entry from the Hugging Face cache and try again",
        )
    return folder
