"""resolve_model_folder: local folders, a fake Hugging Face cache, and the error paths.

Nothing here may reach the network: every test runs with sockets disabled.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meldkit.errors import InputError
from meldkit.io import hub as hubmod
from meldkit.io.hub import looks_like_hub_id, resolve_model_folder

pytest.importorskip("huggingface_hub")

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[Any, ...]]]:
    """Any connection attempt fails, and fails the test even if the caller swallowed it."""
    attempts: list[tuple[Any, ...]] = []

    def refuse(*args: Any, **kwargs: Any) -> None:
        attempts.append(args)
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    yield attempts
    assert attempts == [], f"network access attempted: {attempts}"


def make_cache(root: Path, repo: str, files: dict[str, str], ref: str = "main") -> Path:
    """A cache folder in huggingface_hub's layout: blobs are skipped, files live directly in
    the snapshot (the hub tolerates real files there as well as symlinks)."""
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / COMMIT
    for name, text in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_text(text)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / ref).write_text(COMMIT)
    return snapshot


def test_local_folder_returned_as_is(tmp_path: Path) -> None:
    assert resolve_model_folder(str(tmp_path)) == tmp_path
    assert resolve_model_folder(str(tmp_path), "v1", offline=True) == tmp_path


def test_hub_id_shapes() -> None:
    assert looks_like_hub_id("org/name")
    assert looks_like_hub_id("gpt2")
    assert looks_like_hub_id("org/name-7B.v0_1")
    for bad in ("./x", "/abs/path", "~/m", "a/b/c", "org/../x", "org--x/y", "", "org/name."):
        assert not looks_like_hub_id(bad), bad


def test_offline_cache_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = make_cache(
        tmp_path / "cache", "org/tiny", {"config.json": "{}", "model.safetensors": "x"}
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = resolve_model_folder("org/tiny", None, cache_dir=str(tmp_path / "cache"))
    assert folder == snapshot
    assert (folder / "config.json").is_file()


def test_offline_cache_revision_and_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    snapshot = make_cache(tmp_path / "c", "org/tiny", {"config.json": "{}"}, ref="v1.0")
    assert (
        resolve_model_folder("org/tiny", "v1.0", cache_dir=str(tmp_path / "c"), offline=True)
        == snapshot
    )
    # a commit hash resolves without refs
    assert (
        resolve_model_folder("org/tiny", COMMIT, cache_dir=str(tmp_path / "c"), offline=True)
        == snapshot
    )


def test_not_cached_offline_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError) as err:
        resolve_model_folder("org/absent", None, cache_dir=str(tmp_path / "empty"))
    assert "not in the local Hugging Face cache" in err.value.message
    assert "offline" in err.value.message
    assert err.value.hint


def test_missing_local_path_is_not_a_hub_id(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        resolve_model_folder(str(tmp_path / "nope" / "deeper"))


def test_file_instead_of_folder(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        resolve_model_folder(str(tmp_path / "f"))


def test_hub_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "huggingface_hub" or name.startswith("huggingface_hub."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(InputError) as err:
        resolve_model_folder("org/model")
    assert "meldkit[hf]" in (err.value.hint or "")


class FakeHub:
    """Records snapshot_download calls and materialises the allowed files of a fake repo;
    ``model_info`` lists the same files, or fails like an unreachable hub."""

    def __init__(self, root: Path, repo_files: list[str], listing: bool = True) -> None:
        self.root, self.repo_files, self.listing = root, repo_files, listing
        self.calls: list[dict[str, Any]] = []

    def model_info(self, repo: str, revision: str | None = None) -> Any:
        from types import SimpleNamespace

        if not self.listing:
            raise OSError("hub unreachable")
        return SimpleNamespace(siblings=[SimpleNamespace(rfilename=f) for f in self.repo_files])

    def snapshot_download(self, repo: str, **kwargs: Any) -> str:
        import fnmatch

        self.calls.append(kwargs)
        folder = self.root / repo.replace("/", "--")
        folder.mkdir(parents=True, exist_ok=True)
        for name in self.repo_files:
            allowed = any(fnmatch.fnmatch(name, p) for p in kwargs["allow_patterns"])
            ignored = any(fnmatch.fnmatch(name, p) for p in kwargs["ignore_patterns"])
            if allowed and not ignored:
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                (folder / name).write_text("x")
        return str(folder)

    def fetched(self, folder: Path) -> list[str]:
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _with_fake_hub(monkeypatch: pytest.MonkeyPatch, fake: FakeHub) -> None:
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)
    monkeypatch.setattr(huggingface_hub, "model_info", fake.model_info)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


SAFETENSORS_REPO = [
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
    "special_tokens_map.json", "merges.txt", "vocab.json", "vocab.txt", "chat_template.jinja",
    "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json",
    "pytorch_model.bin", "README.md", "onnx/model.safetensors", "original/consolidated.pth",
]  # fmt: skip
NOT_FETCHED = {
    "pytorch_model.bin",
    "README.md",
    "onnx/model.safetensors",
    "original/consolidated.pth",
}


@pytest.mark.parametrize("listing", [True, False])
def test_online_safetensors_allow_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listing: bool
) -> None:
    fake = FakeHub(tmp_path / "dl", SAFETENSORS_REPO, listing=listing)
    _with_fake_hub(monkeypatch, fake)
    folder = resolve_model_folder("org/m", "main", cache_dir=str(tmp_path / "cache"))
    assert fake.fetched(folder) == sorted(set(SAFETENSORS_REPO) - NOT_FETCHED)
    assert len(fake.calls) == 1
    assert fake.calls[0]["revision"] == "main"
    assert fake.calls[0]["cache_dir"] == str(tmp_path / "cache")
    assert fake.calls[0]["local_files_only"] is False


def test_consolidated_duplicate_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = [
        "config.json",
        "consolidated.safetensors",
        "model-00001-of-00001.safetensors",
        "params.json",
    ]
    fake = FakeHub(tmp_path / "dl", files)
    _with_fake_hub(monkeypatch, fake)
    assert fake.fetched(resolve_model_folder("org/mistral")) == [
        "config.json",
        "model-00001-of-00001.safetensors",
    ]
    only = FakeHub(tmp_path / "dl2", ["config.json", "consolidated.safetensors"])
    _with_fake_hub(monkeypatch, only)
    assert only.fetched(resolve_model_folder("org/mistral")) == [
        "config.json",
        "consolidated.safetensors",
    ]


@pytest.mark.parametrize(("listing", "calls"), [(True, 1), (False, 2)])
def test_online_bin_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listing: bool, calls: int
) -> None:
    files = ["config.json", "tokenizer.json", "pytorch_model-00001-of-00002.bin",
             "pytorch_model-00002-of-00002.bin", "pytorch_model.bin.index.json", "training_args.bin"]  # fmt: skip
    fake = FakeHub(tmp_path / "dl", files, listing=listing)
    _with_fake_hub(monkeypatch, fake)
    folder = resolve_model_folder("org/m", None)
    assert fake.fetched(folder) == sorted(f for f in files if f != "training_args.bin")
    assert len(fake.calls) == calls


def test_online_adapter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeHub(
        tmp_path / "dl", ["adapter_config.json", "adapter_model.safetensors", "README.md"]
    )
    _with_fake_hub(monkeypatch, fake)
    folder = resolve_model_folder("org/lora", None, kind="lora")
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]


def test_hub_errors_become_input_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    from huggingface_hub import errors

    class Response:  # the two attributes the hub's HTTP errors read
        headers: dict[str, str] = {}
        request = None
        status_code = 404

    response: Any = Response()

    def missing(repo: str, **kwargs: Any) -> str:
        raise errors.RepositoryNotFoundError("404", response=response)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", missing)
    monkeypatch.setattr(huggingface_hub, "model_info", missing)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(InputError, match="neither a local folder nor a model"):
        resolve_model_folder("org/missing")

    def unreachable(repo: str, **kwargs: Any) -> str:
        raise errors.LocalEntryNotFoundError("no connection and not cached")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    monkeypatch.setattr(huggingface_hub, "model_info", unreachable)
    with pytest.raises(InputError, match="hub cannot be reached"):
        resolve_model_folder("org/missing")


def test_module_exports() -> None:
    assert "tokenizer.model" in hubmod.TOKENIZER_FILE_PATTERNS
    assert "merges.txt" in hubmod.TOKENIZER_FILE_PATTERNS


def test_unreachable_hub_falls_back_to_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list[tuple[Any, ...]]
) -> None:
    """Online mode with the network down (every connection refused): the cache answers."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    snapshot = make_cache(
        tmp_path / "cache", "org/tiny", {"config.json": "{}", "model.safetensors": "x"}
    )
    assert (
        resolve_model_folder("org/tiny", cache_dir=str(tmp_path / "cache"), offline=False)
        == snapshot
    )
    with pytest.raises(InputError, match="hub cannot be reached"):
        resolve_model_folder("org/absent", cache_dir=str(tmp_path / "cache"), offline=False)
    # huggingface_hub may have read HF_HUB_OFFLINE=1 at import (an earlier test); otherwise the
    # connections were refused here, so nothing left the machine either way.
    no_network.clear()
