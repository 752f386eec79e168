"""The fake Hub (tests/fake_hub.py) against the real huggingface_hub client and transformers loading code."""

import subprocess
import sys
import textwrap

import pytest
import torch
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalTokenNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors.torch import load_file
from transformers import AutoModel, ViTConfig, ViTModel

try:  # tests/ is importable under pytest's default "prepend" import mode; tests.fake_hub if tests/ is a package
    from fake_hub import FakeHub, fake_hub, hub_env  # noqa: F401  (fake_hub is a fixture)
except ImportError:  # pragma: no cover
    from tests.fake_hub import FakeHub, fake_hub, hub_env  # noqa: F401

REPO = "user/tiny"
README = "---\nlibrary_name: transformers\ntags:\n- bootleg\n- vit\n---\n# tiny\nA tiny test model.\n"


def _tiny_vit() -> ViTModel:
    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                       image_size=32, patch_size=8)
    return ViTModel(config).eval()


def _publish(url: str, tmp_path):
    """create_repo + upload_folder of a saved tiny ViT and a README; returns (api, model, folder, CommitInfo)."""
    api = HfApi(endpoint=url, token="hf_fake")
    model, folder = _tiny_vit(), tmp_path / "tiny"
    model.save_pretrained(folder)
    (folder / "README.md").write_text(README)
    assert api.create_repo(REPO).repo_id == REPO
    return api, model, folder, api.upload_folder(repo_id=REPO, folder_path=folder, commit_message="add model")


def _assert_same_model(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(a.eval()(pixels).last_hidden_state, b.eval()(pixels).last_hidden_state)


def test_round_trip_upload_download_from_pretrained(fake_hub, tmp_path):
    api, model, folder, commit = _publish(fake_hub.url, tmp_path)
    local_files = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "README.md"} <= local_files.keys()

    # server state and repo_info agree with the commit the client got back
    repo = fake_hub.repos[REPO]
    assert repo.branches["main"] == commit.oid and len(commit.oid) == 40
    assert api.repo_info(REPO).sha == commit.oid
    assert set(repo.files()) == set(local_files) | {".gitattributes"}
    info = api.model_info(REPO)
    assert "bootleg" in info.tags and info.card_data.library_name == "transformers"
    assert sorted(s.rfilename for s in info.siblings) == sorted(repo.files())
    assert api.create_repo(REPO, exist_ok=True).repo_id == REPO  # 409 -> exist_ok handled client-side
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo(REPO)
    assert err.value.response.status_code == 409

    # hf_hub_download and snapshot_download (separate caches) return the uploaded bytes
    single = hf_hub_download(REPO, "model.safetensors", cache_dir=tmp_path / "c1")
    assert open(single, "rb").read() == local_files["model.safetensors"]
    snap = snapshot_download(REPO, cache_dir=tmp_path / "c2")
    assert commit.oid in snap  # cached under snapshots/<sha>
    for name, data in local_files.items():
        assert (tmp_path / "c2").joinpath(snap, name).read_bytes() == data

    # transformers resolves "user/tiny" through the patched endpoint, into the fixture's HF_HOME
    loaded = AutoModel.from_pretrained(REPO)
    assert type(loaded) is ViTModel
    _assert_same_model(model, loaded)
    assert ("GET", f"/{REPO}/resolve/main/model.safetensors") in fake_hub.requests

    # unchanged files are skipped client-side (preupload returns their oid): no new commit
    n_commits = len(repo.commits)
    assert api.upload_folder(repo_id=REPO, folder_path=folder).oid == commit.oid
    assert len(repo.commits) == n_commits


def test_upload_without_token_fails(fake_hub, tmp_path, monkeypatch):
    api, _, folder, commit = _publish(fake_hub.url, tmp_path)
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(endpoint=fake_hub.url, token=False).upload_folder(repo_id=REPO, folder_path=folder)
    assert err.value.response.status_code == 401
    monkeypatch.delenv("HF_TOKEN")  # no token anywhere (token file path points into the fixture's HF_HOME)
    with pytest.raises((HfHubHTTPError, LocalTokenNotFoundError)):
        HfApi(endpoint=fake_hub.url).upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO)
    with pytest.raises(LocalTokenNotFoundError):
        HfApi(endpoint=fake_hub.url).whoami()
    assert fake_hub.repos[REPO].branches["main"] == commit.oid  # nothing was committed
    assert api.whoami()["name"] == "user"


def test_missing_repo_file_and_revision(fake_hub, tmp_path):
    api, _, _, _ = _publish(fake_hub.url, tmp_path)
    with pytest.raises(RepositoryNotFoundError):
        api.repo_info("user/missing")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("user/missing", "config.json", cache_dir=tmp_path / "c")
    with pytest.raises(RepositoryNotFoundError):
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="user/missing")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "nope.bin", cache_dir=tmp_path / "c")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="no-such-branch", cache_dir=tmp_path / "c")
    with pytest.raises(OSError, match="user/missing"):  # transformers wraps RepositoryNotFoundError
        AutoModel.from_pretrained("user/missing")
    api.create_repo("user/secret", private=True)  # private repos look missing without a token, like on the Hub
    assert api.repo_info("user/secret").private is True
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=fake_hub.url, token=False).repo_info("user/secret")


def test_second_commit_changes_sha_and_history_stays(fake_hub, tmp_path):
    api, _, _, first = _publish(fake_hub.url, tmp_path)
    second = api.upload_file(path_or_fileobj=b"hello\n", path_in_repo="notes/extra.txt", repo_id=REPO)
    assert second.oid != first.oid and api.repo_info(REPO).sha == second.oid
    assert fake_hub.repos[REPO].commits[second.oid].parent == first.oid
    assert open(hf_hub_download(REPO, "notes/extra.txt", cache_dir=tmp_path / "c"), "rb").read() == b"hello\n"
    with pytest.raises(EntryNotFoundError):  # old commits stay addressable by sha
        hf_hub_download(REPO, "notes/extra.txt", revision=first.oid, cache_dir=tmp_path / "c")
    assert "notes/extra.txt" in api.list_repo_files(REPO)
    third = api.delete_file("notes/extra.txt", repo_id=REPO)
    assert "notes/extra.txt" not in api.list_repo_files(REPO, revision=third.oid)


def test_branch_and_pull_request(fake_hub, tmp_path):
    api, _, _, main_commit = _publish(fake_hub.url, tmp_path)
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "dev.txt").write_text("dev")
    with pytest.raises(RevisionNotFoundError):  # like the Hub, a branch must exist before committing to it
        api.upload_folder(repo_id=REPO, folder_path=extra, revision="dev")
    api.create_branch(REPO, branch="dev")
    api.create_branch(REPO, branch="dev", exist_ok=True)
    dev = api.upload_folder(repo_id=REPO, folder_path=extra, revision="dev", create_pr=False)
    assert api.repo_info(REPO, revision="dev").sha == dev.oid
    assert api.repo_info(REPO).sha == main_commit.oid  # main untouched
    assert open(hf_hub_download(REPO, "dev.txt", revision="dev", cache_dir=tmp_path / "c")).read() == "dev"

    pr = api.upload_file(path_or_fileobj=b"pr", path_in_repo="pr.txt", repo_id=REPO, create_pr=True)
    assert pr.pr_revision == "refs/pr/1" and api.repo_info(REPO).sha == main_commit.oid
    assert open(hf_hub_download(REPO, "pr.txt", revision=pr.pr_revision, cache_dir=tmp_path / "c")).read() == "pr"


def test_invalid_readme_metadata_is_rejected(fake_hub):
    api = HfApi(endpoint=fake_hub.url, token="hf_fake")
    api.create_repo(REPO)
    with pytest.raises(ValueError, match="Invalid metadata"):
        api.upload_file(path_or_fileobj=b"---\n- just\n- a list\n---\n", path_in_repo="README.md", repo_id=REPO)


def test_http_details(fake_hub, tmp_path):
    """Things the client only does occasionally: ranged GETs (download resume) and chunked request bodies."""
    from huggingface_hub.utils import get_session

    _, _, folder, commit = _publish(fake_hub.url, tmp_path)
    data = (folder / "config.json").read_bytes()
    url = f"{fake_hub.url}/{REPO}/resolve/main/config.json"
    head = get_session().head(url)
    assert head.headers["X-Repo-Commit"] == commit.oid and int(head.headers["Content-Length"]) == len(data)
    ranged = get_session().get(url, headers={"Range": "bytes=5-"})
    assert ranged.status_code == 206 and ranged.content == data[5:]
    chunked = get_session().post(f"{fake_hub.url}/api/validate-yaml", content=iter([b'{"content": ', b'"# hi"}']))
    assert chunked.status_code == 200 and chunked.json()["errors"] == []
    assert get_session().get(f"{fake_hub.url}/api/models/{REPO}").json()["sha"] == commit.oid  # same connection


def test_push_to_hub_in_process(fake_hub):
    """transformers' own publishing path (shared hf_api() client, token from HF_TOKEN)."""
    model = _tiny_vit()
    model.push_to_hub("user/pushed")
    assert {"config.json", "model.safetensors"} <= set(fake_hub.repos["user/pushed"].files())
    _assert_same_model(model, ViTModel.from_pretrained("user/pushed"))


def test_tree_pagination_without_fixture(tmp_path, monkeypatch):
    """FakeHub used directly: pass endpoint= explicitly; small pages exercise the Link header.

    Only offline mode must be switched off by hand (conftest sets HF_HUB_OFFLINE=1 before huggingface_hub is imported).
    """
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with FakeHub(page_size=2) as hub:
        api = HfApi(endpoint=hub.url, token="hf_fake")
        api.create_repo("org/data")
        for path in ("a.txt", "b/c.txt", "b/d/e.txt", "f.txt"):
            api.upload_file(path_or_fileobj=path.encode(), path_in_repo=path, repo_id="org/data")
        before = len(hub.requests)
        files = sorted(api.list_repo_files("org/data"))  # 7 entries (5 files, 2 folders) -> 4 pages of 2
        assert len(hub.requests) - before == 4
        assert files == [".gitattributes", "a.txt", "b/c.txt", "b/d/e.txt", "f.txt"]
        top = {e.path for e in api.list_repo_tree("org/data")}
        assert top == {".gitattributes", "a.txt", "b", "f.txt"}
        assert {e.path for e in api.list_repo_tree("org/data", path_in_repo="b")} == {"b/c.txt", "b/d"}
        out = snapshot_download("org/data", cache_dir=tmp_path / "c", endpoint=hub.url, token="hf_fake")
        assert (tmp_path / "c").joinpath(out, "b/d/e.txt").read_bytes() == b"b/d/e.txt"
    assert hub._server is None


def test_from_pretrained_in_subprocess(fake_hub, tmp_path):
    """How a trust_remote_code test will load: a fresh interpreter configured only through hub_env()."""
    _, model, _, commit = _publish(fake_hub.url, tmp_path)
    out = tmp_path / "child.safetensors"
    code = textwrap.dedent(f"""
        from huggingface_hub import constants
        from safetensors.torch import save_file
        from transformers import AutoModel
        assert constants.ENDPOINT == {fake_hub.url!r} and not constants.HF_HUB_OFFLINE
        model = AutoModel.from_pretrained({REPO!r})
        save_file({{k: v.contiguous() for k, v in model.state_dict().items()}}, {str(out)!r})
    """)
    env = hub_env(fake_hub.url, tmp_path / "child_hf_home")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    child = load_file(out)
    for key, value in model.state_dict().items():
        assert torch.equal(child[key], value), key
    assert (tmp_path / "child_hf_home" / "hub" / "models--user--tiny" / "snapshots" / commit.oid).is_dir()
