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


PATH_FIX = "check the path in the recipe (paths are relative to the current directory)"
CACHE = "pass --transformers-cache if it is cached elsewhere"


@pytest.fixture
def hub_online(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline switches off: huggingface_hub reads HF_HUB_OFFLINE once, at import, so an
    earlier test may have left it offline; connections are still refused (no_network)."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def test_not_cached_offline_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub_online: None
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError) as err:
        resolve_model_folder("org/absent", None, cache_dir=str(tmp_path / "empty"))
    assert err.value.message == (
        f"model folder 'org/absent' does not exist (resolved to {tmp_path}/org/absent), "
        "and as a hub id: offline (HF_HUB_OFFLINE=1) and not in the local cache"
    )
    assert err.value.hint == (
        f"{PATH_FIX}; for a hub model, unset HF_HUB_OFFLINE to download it, or {CACHE}"
    )


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({"HF_HUB_OFFLINE": "true"}, "offline (HF_HUB_OFFLINE=true)"),
        ({"TRANSFORMERS_OFFLINE": "1"}, "offline (TRANSFORMERS_OFFLINE=1)"),
        # As in huggingface_hub, the first variable that is set decides: HF_HUB_OFFLINE=0 wins.
        ({"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "1"}, "the hub could not be reached"),
    ],
)
def test_offline_state_worded_as_set(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    hub_online: None,
    no_network: list[tuple[Any, ...]],
    env: dict[str, str],
    said: str,
) -> None:
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    with pytest.raises(InputError) as err:
        resolve_model_folder("org/absent", cache_dir=str(tmp_path / "empty"))
    assert said in err.value.message
    no_network.clear()  # the online case tried to connect, and was refused


def test_unreachable_hub_does_not_blame_offline_mode(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    hub_online: None,
    no_network: list[tuple[Any, ...]],
) -> None:
    """The issue's report: HF_HUB_OFFLINE unset, no network, and the old message told the
    user to unset it."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as err:
        resolve_model_folder("models/ft22", cache_dir=str(tmp_path / "empty"))
    assert err.value.message == (
        f"model folder 'models/ft22' does not exist (resolved to {tmp_path}/models/ft22), "
        "and as a hub id: not in the local cache and the hub could not be reached"
    )
    assert err.value.hint == (
        f"{PATH_FIX}; for a hub model, connect to the network to download it, or {CACHE}"
    )
    assert "HF_HUB_OFFLINE" not in str(err.value)
    no_network.clear()


def test_hub_imported_offline_is_said_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub_online: None
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(InputError) as err:
        resolve_model_folder("org/absent", cache_dir=str(tmp_path / "empty"))
    assert err.value.message.endswith(
        "and as a hub id: offline (HF_HUB_OFFLINE was set when huggingface_hub was imported) "
        "and not in the local cache"
    )
    assert "unset HF_HUB_OFFLINE" in (err.value.hint or "")


def test_explicit_offline_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub_online: None
) -> None:
    with pytest.raises(InputError) as err:
        resolve_model_folder("org/absent", cache_dir=str(tmp_path / "empty"), offline=True)
    assert "as a hub id: offline (offline=True) and not in the local cache" in err.value.message
    assert "turn offline mode off to download it" in (err.value.hint or "")


@pytest.fixture
def hub_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every hub call, which must then never come (the name cannot be a hub id)."""
    import huggingface_hub

    calls: list[str] = []

    def record(repo: str, **kwargs: Any) -> str:
        calls.append(repo)
        raise AssertionError("hub looked up")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", record)
    monkeypatch.setattr(huggingface_hub, "model_info", record)
    return calls


@pytest.mark.parametrize("written", ["./models/x", "models/x/y", "~/definitely-absent-m", "ABS"])
def test_non_hub_names_are_never_looked_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub_calls: list[str], written: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = str(tmp_path / "nope" / "deeper") if written == "ABS" else written
    with pytest.raises(InputError) as err:
        resolve_model_folder(path)
    resolved = {
        "./models/x": f"{tmp_path}/models/x",
        "models/x/y": f"{tmp_path}/models/x/y",
        "~/definitely-absent-m": f"{tmp_path}/home/definitely-absent-m",
    }
    detail = f" (resolved to {resolved[written]})" if written in resolved else ""
    assert err.value.message == f"model folder '{path}' does not exist{detail}"
    assert err.value.hint == PATH_FIX
    assert hub_calls == []


def test_close_sibling_is_suggested(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub_calls: list[str]
) -> None:
    (tmp_path / "models" / "ft2").mkdir(parents=True)
    (tmp_path / "models" / "other").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as err:
        resolve_model_folder("./models/ft22")
    assert err.value.message == (
        f"model folder './models/ft22' does not exist (resolved to {tmp_path}/models/ft22; "
        "did you mean './models/ft2'?)"
    )
    with pytest.raises(InputError) as err:
        resolve_model_folder(str(tmp_path / "models" / "FT2x"))
    assert err.value.message == (
        f"model folder '{tmp_path}/models/FT2x' does not exist "
        f"(did you mean '{tmp_path}/models/ft2'?)"
    )
    with pytest.raises(InputError) as err:  # nothing close: no suggestion
        resolve_model_folder("./models/zzzzzz")
    assert "did you mean" not in err.value.message


def test_path_beside_the_recipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub_calls: list[str]
) -> None:
    (tmp_path / "project" / "models" / "ft2").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.raises(InputError) as err:
        resolve_model_folder("./models/ft2", recipe_dir=tmp_path / "project")
    beside = tmp_path / "project" / "models" / "ft2"
    assert err.value.message == (
        f"model folder './models/ft2' does not exist (resolved to "
        f"{tmp_path}/elsewhere/models/ft2; {beside} exists beside the recipe)"
    )
    assert err.value.hint == (
        f"run meldkit from {tmp_path / 'project'} (paths are relative to the current "
        f"directory), or write the path as {beside}"
    )


def test_lora_path_is_named_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub_online: None
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError) as err:
        resolve_model_folder("loras/a", cache_dir=str(tmp_path / "c"), kind="lora")
    assert err.value.message == (
        f"LoRA folder 'loras/a' does not exist (resolved to {tmp_path}/loras/a), "
        "and as a hub id: offline (HF_HUB_OFFLINE=1) and not in the local cache"
    )
    with pytest.raises(InputError) as err:
        resolve_model_folder("org/a", "v2", cache_dir=str(tmp_path / "c"), kind="lora")
    assert "and as a hub id at revision 'v2': offline" in err.value.message


def test_file_instead_of_folder(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError) as err:
        resolve_model_folder(str(tmp_path / "f"))
    assert err.value.message == f"model path '{tmp_path}/f' is a file, not a folder"
    assert err.value.hint == "give the folder that holds it"
    with pytest.raises(InputError) as err:
        resolve_model_folder(str(tmp_path / "f"), kind="lora")
    assert err.value.message == f"LoRA path '{tmp_path}/f' is a file, not a folder"


def test_hub_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "huggingface_hub" or name.startswith("huggingface_hub."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as err:
        resolve_model_folder("org/model")
    assert err.value.message == (
        f"model folder 'org/model' does not exist (resolved to {tmp_path}/org/model), "
        "and as a hub id: huggingface_hub is not installed"
    )
    assert err.value.hint == (
        f"{PATH_FIX}; for a hub model, install the Hugging Face extras: pip install 'meldkit[hf]'"
    )


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
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


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


def test_hub_errors_become_input_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub_online: None
) -> None:
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
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as err:
        resolve_model_folder("org/missing")
    assert err.value.message == (
        f"model folder 'org/missing' does not exist (resolved to {tmp_path}/org/missing), "
        "and as a hub id: no such model on the Hugging Face hub"
    )
    assert err.value.hint == (
        f"{PATH_FIX}; for a hub model, check the id (private models need `hf auth login`)"
    )

    def unreachable(repo: str, **kwargs: Any) -> str:
        raise errors.LocalEntryNotFoundError("no connection and not cached")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    monkeypatch.setattr(huggingface_hub, "model_info", unreachable)
    with pytest.raises(InputError) as err:
        resolve_model_folder("org/missing")
    assert err.value.message.endswith("not in the local cache and the hub could not be reached")

    def broken(repo: str, **kwargs: Any) -> str:
        raise ValueError("bad answer\nsecond line")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", broken)
    with pytest.raises(InputError) as err:
        resolve_model_folder("org/missing")
    assert err.value.message.endswith("as a hub id: the download failed (ValueError: bad answer)")


def test_module_exports() -> None:
    assert "tokenizer.model" in hubmod.TOKENIZER_FILE_PATTERNS
    assert "merges.txt" in hubmod.TOKENIZER_FILE_PATTERNS


def test_unreachable_hub_falls_back_to_cache(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_network: list[tuple[Any, ...]],
    hub_online: None,
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
    with pytest.raises(InputError) as err:
        resolve_model_folder("org/absent", cache_dir=str(tmp_path / "cache"), offline=False)
    assert err.value.message.endswith("not in the local cache and the hub could not be reached")
    no_network.clear()  # the connections were refused here, so nothing left the machine
