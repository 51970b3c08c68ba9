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
        assert HfApi(endpoint=url, token=local.token(root)).whoami()["name"] == "local"
    finally:
        assert local.stop(root) is True
    assert local.status(root) is None
    assert local.stop(root) is False


# -- pull requests: a stage run is a PR of its output repo, committed to by many workers, merged when complete -----
def _pr_repo(api: HfApi, prefix: str) -> tuple[str, str]:
    """A dataset repo with a card and one parquet file on main, tagged v1: (repo id, main's sha)."""
    repo_id = _unique(prefix)
    api.create_repo(repo_id, repo_type="dataset")
    head = api.create_commit(repo_id, repo_type="dataset", commit_message="base", operations=[
        CommitOperationAdd("README.md", _card("Base")),
        CommitOperationAdd("data/base.parquet", _parquet([0])),
    ]).oid
    api.create_tag(repo_id, repo_type="dataset", tag="v1")
    return repo_id, head


def _shard(api: HfApi, repo_id: str, pr, i: int) -> str:
    """One worker's commit to the pull request: a parquet shard and a JSON record in the description."""
    return api.create_commit(repo_id, repo_type="dataset", revision=pr.git_reference, commit_message=f"shard {i}",
                             commit_description=f'{{"shard": {i}}}',
                             operations=[CommitOperationAdd(f"data/shard-{i:05d}.parquet", _parquet([i]))]).oid


def test_pull_request_opens_as_draft_at_main(api):
    repo_id, head = _pr_repo(api, "pr-open")
    pr = api.create_pull_request(repo_id, title="Run abc", description='{"run": "abc"}', repo_type="dataset")
    assert (pr.num, pr.status, pr.is_pull_request, pr.git_reference) == (1, "draft", True, "refs/pr/1")
    assert pr.target_branch == "refs/heads/main" and pr.merge_commit_oid is None and pr.conflicting_files == []
    [description] = pr.events
    assert description.type == "comment" and description.content == '{"run": "abc"}'
    assert pr.url.endswith(f"/datasets/{repo_id}/discussions/1") and pr.author == "local"
    assert api.dataset_info(repo_id, revision=pr.git_reference).sha == head
    refs = api.list_repo_refs(repo_id, repo_type="dataset", include_pull_requests=True)
    assert [(r.name, r.ref, r.target_commit) for r in refs.pull_requests] == [("1", "refs/pr/1", head)]
    assert api.list_repo_refs(repo_id, repo_type="dataset").pull_requests is None
    # Discussions share the numbering and start open; titles are 3-200 characters, as on the Hub.
    discussion = api.create_discussion(repo_id, title="A question", repo_type="dataset")
    assert (discussion.num, discussion.status, discussion.is_pull_request) == (2, "open", False)
    for title in ("ab", "x" * 201):
        with pytest.raises(HfHubHTTPError) as err:
            api.create_pull_request(repo_id, title=title, repo_type="dataset")
        assert err.value.response.status_code == 400


def test_discussions_list_filters_and_pages(api):
    repo_id, _ = _pr_repo(api, "pr-list")
    for i in range(51):  # more than the Hub's page of 50
        api.create_discussion(repo_id, title=f"Question {i}", repo_type="dataset")
    draft = api.create_pull_request(repo_id, title="Run draft", repo_type="dataset")
    closed = api.create_pull_request(repo_id, title="Run closed", repo_type="dataset")
    api.change_discussion_status(repo_id, closed.num, new_status="closed", repo_type="dataset")

    def listed(**filters) -> list[tuple[int, str]]:
        return [(d.num, d.status) for d in api.get_repo_discussions(repo_id, repo_type="dataset", **filters)]

    assert [num for num, _ in listed()] == list(range(53, 0, -1))  # newest first, across two pages
    # "open" lists drafts too, as the Hub does: a rerun finds its draft pull request by title among the open ones.
    assert listed(discussion_type="pull_request", discussion_status="open") == [(draft.num, "draft")]
    assert listed(discussion_type="pull_request", discussion_status="closed") == [(closed.num, "closed")]
    assert len(listed(discussion_type="discussion", discussion_status="open")) == 51
    assert len(listed(author="local")) == 53 and listed(author="someone-else") == []
    [found] = [d for d in api.get_repo_discussions(repo_id, repo_type="dataset", discussion_type="pull_request",
                                                    discussion_status="open") if d.title == "Run draft"]
    assert found.git_reference == draft.git_reference and found.repo_type == "dataset" and found.repo_id == repo_id


def test_commits_to_pull_request_leave_main_and_tags(api):
    repo_id, head = _pr_repo(api, "pr-commits")
    pr = api.create_pull_request(repo_id, title="Run commits", repo_type="dataset")
    shards = [_shard(api, repo_id, pr, i) for i in range(2)]
    assert api.dataset_info(repo_id).sha == head and api.dataset_info(repo_id, revision="v1").sha == head
    assert api.list_repo_files(repo_id, repo_type="dataset") == [".gitattributes", "README.md", "data/base.parquet"]
    assert sorted(api.list_repo_files(repo_id, repo_type="dataset", revision=pr.git_reference)) == [
        ".gitattributes", "README.md", "data/base.parquet", "data/shard-00000.parquet", "data/shard-00001.parquet"]
    tree = api.list_repo_tree(repo_id, "data", repo_type="dataset", revision="refs/pr/1", expand=True)
    assert {e.path: e.last_commit.oid for e in tree if "shard" in e.path} == {
        "data/shard-00000.parquet": shards[0], "data/shard-00001.parquet": shards[1]}
    commits = api.list_repo_commits(repo_id, repo_type="dataset", revision=pr.git_reference)
    assert [(c.commit_id, c.title, c.message) for c in commits[:3]] == [
        (shards[1], "shard 1", '{"shard": 1}'), (shards[0], "shard 0", '{"shard": 0}'), (head, "base", "")]
    [info] = api.get_paths_info(repo_id, ["data/shard-00001.parquet"], repo_type="dataset", revision="refs/pr/1")
    assert info.lfs is not None and info.lfs.size == len(_parquet([1]))
    # A commit to a pull request that does not exist is a RevisionNotFound, as for an unknown branch.
    with pytest.raises(RevisionNotFoundError):
        api.create_commit(repo_id, repo_type="dataset", revision="refs/pr/9", commit_message="x",
                          operations=[CommitOperationAdd("x.txt", b"x")])


def test_pull_request_details_events_in_order(api):
    repo_id, _ = _pr_repo(api, "pr-events")
    pr = api.create_pull_request(repo_id, title="Run events", description="plan", repo_type="dataset")
    first = _shard(api, repo_id, pr, 0)
    comment = api.comment_discussion(repo_id, pr.num, "halfway", repo_type="dataset")
    second = _shard(api, repo_id, pr, 1)
    rename = api.rename_discussion(repo_id, pr.num, "Run events, renamed", repo_type="dataset")
    edited = api.edit_discussion_comment(repo_id, pr.num, comment.id, "half done", repo_type="dataset")
    assert (rename.old_title, rename.new_title) == ("Run events", "Run events, renamed")
    assert edited.edited and edited.content == "half done" and edited.number_of_edits == 1
    details = api.get_discussion_details(repo_id, pr.num, repo_type="dataset")
    assert [(e.type, getattr(e, "oid", None)) for e in details.events] == [
        ("comment", None), ("commit", first), ("comment", None), ("commit", second), ("title-change", None)]
    assert [e.summary for e in details.events if e.type == "commit"] == ["shard 0", "shard 1"]
    assert details.events[2].content == "half done" and details.title == "Run events, renamed"
    assert "+++ b/data/shard-00001.parquet" in details.diff and "README.md" not in details.diff
    with pytest.warns(UserWarning):  # the client warns that hiding cannot be undone
        hidden = api.hide_discussion_comment(repo_id, pr.num, comment.id, repo_type="dataset")
    assert hidden.hidden and hidden.content == ""


def test_concurrent_commits_to_one_pull_request_all_land(api):
    from concurrent.futures import ThreadPoolExecutor

    repo_id, head = _pr_repo(api, "pr-concurrent")
    pr = api.create_pull_request(repo_id, title="Run concurrent", repo_type="dataset")
    workers = 10
    with ThreadPoolExecutor(workers) as pool:  # no parent_commit: each commit goes on top of whatever landed first
        oids = list(pool.map(lambda i: _shard(api, repo_id, pr, i), range(workers)))
    files = api.list_repo_files(repo_id, repo_type="dataset", revision=pr.git_reference)
    assert sorted(f for f in files if "shard" in f) == [f"data/shard-{i:05d}.parquet" for i in range(workers)]
    commits = api.list_repo_commits(repo_id, repo_type="dataset", revision=pr.git_reference)
    assert {c.commit_id for c in commits[:workers]} == set(oids) and commits[workers].commit_id == head
    assert sorted(c.message for c in commits[:workers]) == sorted(f'{{"shard": {i}}}' for i in range(workers))
    details = api.get_discussion_details(repo_id, pr.num, repo_type="dataset")
    assert [e.oid for e in details.events if e.type == "commit"] == [c.commit_id for c in reversed(commits[:workers])]
    assert api.dataset_info(repo_id).sha == head


def test_reads_at_pull_request_ref(api):
    import datasets

    repo_id, _ = _pr_repo(api, "pr-reads")
    pr = api.create_pull_request(repo_id, title="Run reads", repo_type="dataset")
    api.create_commit(repo_id, repo_type="dataset", revision=pr.git_reference, commit_message="rows",
                      operations=[CommitOperationDelete("data/base.parquet"),
                                  CommitOperationAdd("data/train-00000-of-00001.parquet", _parquet([5, 6, 7]))])
    path = hf_hub_download(repo_id, "data/train-00000-of-00001.parquet", repo_type="dataset", revision="refs/pr/1")
    assert pq.read_table(path).column("id").to_pylist() == [5, 6, 7]
    fs = HfFileSystem(skip_instance_cache=True)
    for revision in ("refs/pr/1", "refs%2Fpr%2F1"):  # HfFileSystem takes the PR ref both ways
        base = f"datasets/{repo_id}@{revision}"
        assert fs.glob(f"{base}/data/*.parquet") == [f"{base}/data/train-00000-of-00001.parquet"]
        with fs.open(f"{base}/data/train-00000-of-00001.parquet", block_size=64) as f:  # the footer, by Range
            assert pq.read_metadata(f).num_rows == 3
    assert datasets.load_dataset(repo_id, revision="refs/pr/1", split="train")["id"] == [5, 6, 7]


def test_merge_moves_main_once_to_the_pull_requests_files(api):
    repo_id, head = _pr_repo(api, "pr-merge")
    pr = api.create_pull_request(repo_id, title="Run merge", repo_type="dataset")
    shards = [_shard(api, repo_id, pr, i) for i in range(2)]
    card = api.create_commit(repo_id, repo_type="dataset", revision=pr.git_reference, commit_message="card",
                             operations=[CommitOperationAdd("README.md", _card("Merged"))]).oid
    with pytest.raises(HfHubHTTPError) as err:  # the Hub merges no draft: "publish it to be able to merge"
        api.merge_pull_request(repo_id, pr.num, repo_type="dataset")
    assert err.value.response.status_code == 400
    published = api.change_discussion_status(repo_id, pr.num, new_status="open", repo_type="dataset")
    assert published.new_status == "open"
    api.merge_pull_request(repo_id, pr.num, comment="all shards in", repo_type="dataset")

    details = api.get_discussion_details(repo_id, pr.num, repo_type="dataset")
    assert details.status == "merged" and details.merge_commit_oid == api.dataset_info(repo_id).sha
    assert [e.type for e in details.events][-2:] == ["comment", "status-change"]
    assert details.events[-1].new_status == "merged" and details.events[-2].content == "all shards in"
    main = api.list_repo_commits(repo_id, repo_type="dataset")
    assert [c.commit_id for c in main[:2]] == [details.merge_commit_oid, head]  # one new commit, a squash
    assert main[0].title == "Run merge (#1)"  # the Hub's title for a merged pull request
    assert main[0].message.splitlines() == [f"- shard 0 ({shards[0]})", f"- shard 1 ({shards[1]})", f"- card ({card})"]
    assert sorted(api.list_repo_files(repo_id, repo_type="dataset")) == sorted(
        api.list_repo_files(repo_id, repo_type="dataset", revision=pr.git_reference))
    api.create_tag(repo_id, repo_type="dataset", tag="run-merge", revision=details.merge_commit_oid)
    refs = api.list_repo_refs(repo_id, repo_type="dataset", include_pull_requests=True)
    assert {t.name: t.target_commit for t in refs.tags} == {"v1": head, "run-merge": details.merge_commit_oid}
    assert refs.pull_requests[0].target_commit == card  # the PR ref stays where it was
    # A merged pull request is done: no second merge, no reopening, no more commits.
    for attempt in (lambda: api.merge_pull_request(repo_id, pr.num, repo_type="dataset"),
                    lambda: api.change_discussion_status(repo_id, pr.num, new_status="open", repo_type="dataset"),
                    lambda: _shard(api, repo_id, pr, 9)):
        with pytest.raises(HfHubHTTPError) as err:
            attempt()
        assert err.value.response.status_code == 400
    assert api.dataset_info(repo_id).sha == details.merge_commit_oid
    assert [d.num for d in api.get_repo_discussions(repo_id, repo_type="dataset", discussion_status="closed")] == [1]


def test_merge_after_main_moved_applies_changes_or_reports_conflicts(api):
    repo_id, _ = _pr_repo(api, "pr-moved")
    clean = api.create_pull_request(repo_id, title="Run clean", repo_type="dataset")
    clashing = api.create_pull_request(repo_id, title="Run clashing", repo_type="dataset")
    _shard(api, repo_id, clean, 0)
    api.create_commit(repo_id, repo_type="dataset", revision=clashing.git_reference, commit_message="card",
                      operations=[CommitOperationAdd("README.md", _card("From the PR"))])
    moved = api.create_commit(repo_id, repo_type="dataset", commit_message="main moves", operations=[
        CommitOperationAdd("README.md", _card("From main")), CommitOperationAdd("notes.txt", b"main")]).oid
    assert api.get_discussion_details(repo_id, clean.num, repo_type="dataset").conflicting_files == []
    assert api.get_discussion_details(repo_id, clashing.num, repo_type="dataset").conflicting_files == ["README.md"]
    for pr in (clean, clashing):
        api.change_discussion_status(repo_id, pr.num, new_status="open", repo_type="dataset")
    with pytest.raises(HfHubHTTPError) as err:
        api.merge_pull_request(repo_id, clashing.num, repo_type="dataset")
    assert err.value.response.status_code == 409 and "README.md" in str(err.value)
    assert api.dataset_info(repo_id).sha == moved
    api.merge_pull_request(repo_id, clean.num, repo_type="dataset")
    merged = api.get_discussion_details(repo_id, clean.num, repo_type="dataset").merge_commit_oid
    assert api.list_repo_commits(repo_id, repo_type="dataset")[1].commit_id == moved
    readme = hf_hub_download(repo_id, "README.md", repo_type="dataset", revision=merged)
    assert Path(readme).read_bytes() == _card("From main")  # main's own change is kept...
    assert {"notes.txt", "data/shard-00000.parquet"} <= set(api.list_repo_files(repo_id, repo_type="dataset"))


def test_create_commit_with_create_pr(api):
    repo_id, head = _pr_repo(api, "pr-create")
    commit = api.create_commit(repo_id, repo_type="dataset", create_pr=True, commit_message="Add notes",
                               commit_description="Why: a test.", operations=[CommitOperationAdd("notes.txt", b"n")])
    assert (commit.pr_num, commit.pr_revision) == (1, "refs/pr/1")
    assert commit.pr_url.endswith(f"/datasets/{repo_id}/discussions/1")
    assert api.dataset_info(repo_id).sha == head and api.dataset_info(repo_id, revision="refs/pr/1").sha == commit.oid
    pr = api.get_discussion_details(repo_id, commit.pr_num, repo_type="dataset")
    assert (pr.title, pr.status, pr.is_pull_request) == ("Add notes", "open", True)  # open at once, not a draft
    assert [(e.type, getattr(e, "oid", None)) for e in pr.events] == [("comment", None), ("commit", commit.oid)]
    assert pr.events[0].content == "Why: a test."
    # A closed pull request takes no commits until it is reopened.
    api.change_discussion_status(repo_id, pr.num, new_status="closed", comment="not now", repo_type="dataset")
    with pytest.raises(HfHubHTTPError) as err:
        _shard(api, repo_id, pr, 0)
    assert err.value.response.status_code == 400
    api.change_discussion_status(repo_id, pr.num, new_status="open", repo_type="dataset")
    _shard(api, repo_id, pr, 0)
    assert "data/shard-00000.parquet" in api.list_repo_files(repo_id, repo_type="dataset", revision="refs/pr/1")
    # With a parent commit, the pull request starts from it rather than from main's head.
    initial = api.list_repo_commits(repo_id, repo_type="dataset")[-1].commit_id
    older = api.create_commit(repo_id, repo_type="dataset", create_pr=True, parent_commit=initial,
                              commit_message="From the start", operations=[CommitOperationAdd("y.txt", b"y")])
    assert older.pr_num == 2 and [c.commit_id for c in api.list_repo_commits(
        repo_id, repo_type="dataset", revision=older.pr_revision)] == [older.oid, initial]


def test_access_log_has_one_line_per_request_and_no_token(tmp_path):
    root, log = tmp_path / "hub", tmp_path / "access.jsonl"
    url = local.start(root, port=free_port(), access_log=log)
    try:
        token = local.token(root)
        api = HfApi(endpoint=url, token=token)
        repo_id = _unique("logged")
        api.create_repo(repo_id, repo_type="dataset")
        rows = list(range(50_000))  # ~640 kB: more than pyarrow's first footer read
        sha = api.create_commit(repo_id, repo_type="dataset", commit_message="data",
                                operations=[CommitOperationAdd("data/x.parquet", _parquet(rows))]).oid
        before = len(local.read_access_log(root))
        api.list_repo_refs(repo_id, repo_type="dataset")
        with pytest.raises(RepositoryNotFoundError):
            api.dataset_info("tests/not-there")
        entries = local.read_access_log(root)
        assert len(entries) == before + 2
        assert entries[-2] == {**entries[-2], "method": "GET", "path": f"/api/datasets/{repo_id}/refs", "range": None,
                               "status": 200}
        assert entries[-1]["status"] == 404 and entries[-1]["path"] == "/api/datasets/tests/not-there"
        assert set(entries[-1]) == {"time", "method", "path", "range", "status", "bytes"}

        hf_hub_download(repo_id, "data/x.parquet", repo_type="dataset", revision=sha, endpoint=url, token=token,
                        cache_dir=tmp_path / "cache")
        fs = HfFileSystem(endpoint=url, token=token, skip_instance_cache=True)
        with fs.open(f"datasets/{repo_id}@{sha}/data/x.parquet", block_size=1024) as f:
            assert pq.read_metadata(f).num_rows == len(rows)
        resolve = f"/datasets/{repo_id}/resolve/{sha}/data/x.parquet"
        gets = [e for e in local.read_access_log(root) if e["method"] == "GET" and e["path"] == resolve]
        full, ranged = [e for e in gets if e["range"] is None], [e for e in gets if e["range"]]
        assert len(full) == 1 and full[0]["bytes"] == len(_parquet(rows))  # hf_hub_download's one download
        assert ranged and all(e["status"] == 206 for e in ranged)  # then pyarrow's footer reads, by Range
        assert sum(e["bytes"] for e in ranged) < len(_parquet(rows)) // 4
        assert token not in log.read_text() and "authorization" not in log.read_text().lower()
        with pytest.raises(RuntimeError):  # the running server logs elsewhere: never silently reused
            local.start(root, access_log=tmp_path / "other.jsonl")
    finally:
        local.stop(root)
