"""The local Hub endpoint, exercised only through the real ``huggingface_hub`` and ``datasets`` clients."""

import io
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationCopy,
    CommitOperationDelete,
    DatasetCard,
    HfApi,
    HfFileSystem,
    hf_hub_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from hf_pipeline.hub import local
from hf_pipeline.hub.local import free_port


def _parquet(rows: list[int]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.table({"id": rows, "text": [f"row {i}" for i in rows]}), buffer)
    return buffer.getvalue()


def _card(title: str) -> bytes:
    return f"---\nlicense: apache-2.0\npretty_name: {title}\n---\n# {title}\n".encode()


def _unique(prefix: str) -> str:
    return f"tests/{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def api(local_hub) -> HfApi:
    return HfApi(endpoint=local_hub)


@pytest.fixture(scope="module")
def dataset_repo(api):
    """A dataset with two commits: v1 (rows 0-2, tagged, branched as dev) and v2 (rows 10-14, tagged)."""
    repo_id = _unique("dataset")
    api.create_repo(repo_id, repo_type="dataset")
    first = api.create_commit(
        repo_id,
        repo_type="dataset",
        commit_message="Add v1",
        operations=[
            CommitOperationAdd("data/train-00000-of-00001.parquet", _parquet([0, 1, 2])),
            CommitOperationAdd("README.md", _card("Version one")),
        ],
    )
    api.create_tag(repo_id, repo_type="dataset", tag="v1", tag_message="first release")
    api.create_branch(repo_id, repo_type="dataset", branch="dev")
    second = api.create_commit(
        repo_id,
        repo_type="dataset",
        commit_message="Add v2",
        commit_description="More rows.",
        parent_commit=first.oid,
        operations=[
            CommitOperationAdd("data/train-00000-of-00001.parquet", _parquet([10, 11, 12, 13, 14])),
            CommitOperationAdd("README.md", _card("Version two")),
        ],
    )
    api.create_tag(repo_id, repo_type="dataset", tag="v2", revision=second.oid)
    return {"id": repo_id, "v1": first.oid, "v2": second.oid}


def test_commit_stores_parquet_via_lfs_and_readme_as_regular(api, dataset_repo):
    files = {
        f.path: f
        for f in api.get_paths_info(
            dataset_repo["id"], ["README.md", "data/train-00000-of-00001.parquet"], repo_type="dataset", revision="v1"
        )
    }
    assert files["data/train-00000-of-00001.parquet"].lfs is not None
    assert files["data/train-00000-of-00001.parquet"].lfs.size == len(_parquet([0, 1, 2]))
    assert files["README.md"].lfs is None
    assert sorted(api.list_repo_files(dataset_repo["id"], repo_type="dataset", revision="v1")) == [
        ".gitattributes", "README.md", "data/train-00000-of-00001.parquet"]


def test_refs_show_both_tags_and_branches(api, dataset_repo):
    refs = api.list_repo_refs(dataset_repo["id"], repo_type="dataset")
    assert {t.name: t.target_commit for t in refs.tags} == {"v1": dataset_repo["v1"], "v2": dataset_repo["v2"]}
    assert {b.name: b.target_commit for b in refs.branches} == {"main": dataset_repo["v2"], "dev": dataset_repo["v1"]}


@pytest.mark.parametrize("revision, expected", [("v1", "v1"), ("dev", "v1"), ("v2", "v2"), ("main", "v2")])
def test_repo_info_at_branch_tag_and_sha(api, dataset_repo, revision, expected):
    assert api.dataset_info(dataset_repo["id"], revision=revision).sha == dataset_repo[expected]
    assert api.dataset_info(dataset_repo["id"], revision=dataset_repo[expected]).sha == dataset_repo[expected]


def test_repo_info_without_revision_is_latest_main(api, dataset_repo):
    info = api.repo_info(dataset_repo["id"], repo_type="dataset")
    assert info.sha == dataset_repo["v2"]
    assert info.card_data["pretty_name"] == "Version two"


def test_list_repo_commits(api, dataset_repo):
    commits = api.list_repo_commits(dataset_repo["id"], repo_type="dataset")
    assert [c.commit_id for c in commits[:2]] == [dataset_repo["v2"], dataset_repo["v1"]]
    assert commits[0].title == "Add v2" and commits[0].message == "More rows."
    assert commits[-1].title == "initial commit"  # the Hub creates every repo with a .gitattributes commit


@pytest.mark.parametrize("tag, rows", [("v1", [0, 1, 2]), ("v2", [10, 11, 12, 13, 14])])
def test_load_dataset_at_tag_returns_that_commits_rows(dataset_repo, tag, rows):
    import datasets

    ds = datasets.load_dataset(dataset_repo["id"], revision=tag, split="train")
    assert ds["id"] == rows
    assert ds["text"] == [f"row {i}" for i in rows]


def test_dataset_card_at_revision(dataset_repo):
    # DatasetCard.load has no `revision` argument (huggingface_hub 2.4): load the README downloaded at a revision.
    readme = hf_hub_download(dataset_repo["id"], "README.md", repo_type="dataset", revision="v1")
    assert DatasetCard.load(readme).data.pretty_name == "Version one"
    card = DatasetCard.load(dataset_repo["id"])  # latest main
    assert card.data.pretty_name == "Version two" and "# Version two" in card.text


def test_hf_hub_download_at_tag(dataset_repo):
    path = hf_hub_download(dataset_repo["id"], "data/train-00000-of-00001.parquet", repo_type="dataset",
                           revision="v1")
    assert pq.read_table(path).column("id").to_pylist() == [0, 1, 2]
    assert Path(path).parents[1].name == dataset_repo["v1"]  # snapshots/<sha>/data/<file>


def test_hf_file_system_glob_open_and_ranges(dataset_repo):
    fs = HfFileSystem()
    base = f"datasets/{dataset_repo['id']}@v2"
    assert fs.glob(f"{base}/data/*.parquet") == [f"{base}/data/train-00000-of-00001.parquet"]
    expected = _parquet([10, 11, 12, 13, 14])
    with fs.open(f"{base}/data/train-00000-of-00001.parquet", block_size=16) as f:  # LFS object, by ranges
        f.seek(4)
        assert f.read(8) == expected[4:12]
        f.seek(0)
        assert pq.read_table(f).column("id").to_pylist() == [10, 11, 12, 13, 14]
    with fs.open(f"{base}/README.md", block_size=8) as f:  # regular git blob, by ranges
        f.seek(4)
        assert f.read(12) == _card("Version two")[4:16]
    assert fs.info(f"{base}/README.md")["size"] == len(_card("Version two"))
    assert not fs.exists(f"{base}/missing.txt")


def test_missing_repo_raises_repository_not_found(api):
    with pytest.raises(RepositoryNotFoundError):
        api.repo_info("tests/does-not-exist", repo_type="dataset")
    with pytest.raises(RepositoryNotFoundError):
        api.list_repo_refs("tests/does-not-exist", repo_type="dataset")
    with pytest.raises(RepositoryNotFoundError):
        api.create_commit("tests/does-not-exist", repo_type="dataset", commit_message="x",
                          operations=[CommitOperationAdd("a.txt", b"a")])


def test_unknown_revision_raises_revision_not_found(api, dataset_repo):
    with pytest.raises(RevisionNotFoundError):
        api.repo_info(dataset_repo["id"], repo_type="dataset", revision="no-such-tag")
    with pytest.raises(RevisionNotFoundError):
        api.list_repo_files(dataset_repo["id"], repo_type="dataset", revision="no-such-tag")
    with pytest.raises(RevisionNotFoundError):
        api.repo_info(dataset_repo["id"], repo_type="dataset", revision="0" * 40)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(dataset_repo["id"], "README.md", repo_type="dataset", revision="no-such-tag")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(dataset_repo["id"], "nope.txt", repo_type="dataset", revision="v1")


def test_parent_commit_mismatch_is_rejected(api, dataset_repo):
    with pytest.raises(HfHubHTTPError) as err:
        api.create_commit(dataset_repo["id"], repo_type="dataset", commit_message="stale",
                          parent_commit=dataset_repo["v1"], operations=[CommitOperationAdd("x.txt", b"x")])
    assert err.value.response.status_code == 412  # what huggingface.co answers (datasets retries on it)
    assert api.dataset_info(dataset_repo["id"]).sha == dataset_repo["v2"]


def test_existing_tag_and_branch_conflict(api, dataset_repo):
    with pytest.raises(HfHubHTTPError) as err:
        api.create_tag(dataset_repo["id"], repo_type="dataset", tag="v1")
    assert err.value.response.status_code == 409
    api.create_tag(dataset_repo["id"], repo_type="dataset", tag="v1", exist_ok=True)
    api.create_branch(dataset_repo["id"], repo_type="dataset", branch="dev", exist_ok=True)
    with pytest.raises(RevisionNotFoundError):
        api.create_tag(dataset_repo["id"], repo_type="dataset", tag="v9", revision="no-such-branch")


def test_create_repo_exist_ok(api, dataset_repo):
    api.create_repo(dataset_repo["id"], repo_type="dataset", exist_ok=True)
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo(dataset_repo["id"], repo_type="dataset")
    assert err.value.response.status_code == 409


def test_branch_commits_delete_copy_and_refs_lifecycle(api):
    repo_id = _unique("ops")
    api.create_repo(repo_id, repo_type="dataset")
    api.create_commit(repo_id, repo_type="dataset", commit_message="base", operations=[
        CommitOperationAdd("keep.txt", b"keep"),
        CommitOperationAdd("old/a.txt", b"a"),
        CommitOperationAdd("old/b.bin", bytes(range(256))),
    ])
    api.create_branch(repo_id, repo_type="dataset", branch="feature/x")
    feature = api.create_commit(repo_id, repo_type="dataset", revision="feature/x", commit_message="ops", operations=[
        CommitOperationDelete("old/"),
        CommitOperationDelete("keep.txt"),
        CommitOperationCopy("old/b.bin", "new/b.bin"),
        CommitOperationAdd("new/c.txt", b"c"),
    ])
    assert sorted(api.list_repo_files(repo_id, repo_type="dataset", revision="feature/x")) == [
        ".gitattributes", "new/b.bin", "new/c.txt"]
    assert "keep.txt" in api.list_repo_files(repo_id, repo_type="dataset")  # main untouched
    path = hf_hub_download(repo_id, "new/b.bin", repo_type="dataset", revision=feature.oid)
    assert Path(path).read_bytes() == bytes(range(256))
    # Expanded listings carry each entry's last commit *on the requested revision*.
    tree = api.list_repo_tree(repo_id, "new", repo_type="dataset", revision="feature/x", expand=True)
    assert {entry.path: entry.last_commit.oid for entry in tree} == {"new/b.bin": feature.oid, "new/c.txt": feature.oid}
    [info] = api.get_paths_info(repo_id, ["keep.txt"], repo_type="dataset", expand=True)
    assert info.last_commit.title == "base"
    api.create_tag(repo_id, repo_type="dataset", tag="t", revision="feature/x")
    api.delete_tag(repo_id, repo_type="dataset", tag="t")
    api.delete_branch(repo_id, repo_type="dataset", branch="feature/x")
    refs = api.list_repo_refs(repo_id, repo_type="dataset")
    assert [b.name for b in refs.branches] == ["main"] and refs.tags == []
    api.delete_repo(repo_id, repo_type="dataset")
    with pytest.raises(RepositoryNotFoundError):
        api.repo_info(repo_id, repo_type="dataset")


def test_upload_folder(api, tmp_path):
    repo_id = _unique("folder")
    api.create_repo(repo_id, repo_type="dataset")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "part-0.parquet").write_bytes(_parquet([7, 8]))
    (tmp_path / "notes.txt").write_text("hello\n")
    api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=tmp_path, commit_message="folder")
    assert sorted(api.list_repo_files(repo_id, repo_type="dataset")) == [
        ".gitattributes", "data/part-0.parquet", "notes.txt"]
    # Re-uploading unchanged files is a no-op commit the client skips, thanks to preupload's remote oids.
    before = api.repo_info(repo_id, repo_type="dataset").sha
    api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=tmp_path)
    assert api.repo_info(repo_id, repo_type="dataset").sha == before


def test_push_to_hub_then_load_dataset(local_hub):
    import datasets

    repo_id = _unique("pushed")
    datasets.Dataset.from_dict({"q": ["a", "b", "c"]}).push_to_hub(repo_id)
    assert datasets.load_dataset(repo_id, split="train", revision="main")["q"] == ["a", "b", "c"]


def test_model_safetensors_roundtrip(api):
    from safetensors.numpy import load_file, save

    import numpy as np

    repo_id = _unique("model")
    api.create_repo(repo_id)  # model is the default repo type
    tensors = {"weight": np.arange(12, dtype=np.float32).reshape(3, 4)}
    api.upload_file(path_or_fileobj=save(tensors), path_in_repo="model.safetensors", repo_id=repo_id)
    info = api.model_info(repo_id, files_metadata=True)
    assert {s.rfilename: s.lfs is not None for s in info.siblings}["model.safetensors"]
    path = hf_hub_download(repo_id, "model.safetensors")
    np.testing.assert_array_equal(load_file(path)["weight"], tensors["weight"])


def test_local_start_status_stop(tmp_path):
    root = tmp_path / "hub"
    assert local.status(root) is None
    url = local.start(root, port=free_port())
    try:
        state = local.status(root)
        assert state is not None and state["url"] == url
        assert local.start(root) == url  # already running for this root: reused, not restarted
        assert HfApi(endpoint=url).whoami()["name"] == "local"
    finally:
        assert local.stop(root) is True
    assert local.status(root) is None
    assert local.stop(root) is False
