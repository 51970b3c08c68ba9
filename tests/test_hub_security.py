"""Who may do what on the local Hub, and what it refuses: tokens, accounts, private repos, authorship, Host/Origin
checks, body caps, listings. Through the real ``huggingface_hub`` client wherever it can send the request; raw HTTP
(urllib) only for what no client sends (a foreign Host or Origin, a text/plain commit, an oversized body)."""

import base64
import hashlib
import json
import os
import stat
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

from hf_pipeline import cli
from hf_pipeline.hub import local
from hf_pipeline.hub.accounts import new_token
from hf_pipeline.hub.local import free_port

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _raw(method: str, url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict, bytes]:
    """(status, headers with lower-case names, body) of one plain HTTP request; no client logic in the way."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with _OPENER.open(request, timeout=30) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def _unique(namespace: str, prefix: str) -> str:
    return f"{namespace}/{prefix}-{uuid.uuid4().hex[:8]}"


def _ndjson_commit(summary: str, files: dict[str, bytes]) -> bytes:
    lines = [{"key": "header", "value": {"summary": summary}}]
    lines += [{"key": "file", "value": {"path": p, "content": base64.b64encode(data).decode(), "encoding": "base64"}}
              for p, data in files.items()]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


@pytest.fixture(scope="module")
def owner(local_hub) -> HfApi:
    """The default account, ``local``, with the session's token (HF_TOKEN)."""
    return HfApi(endpoint=local_hub)


@pytest.fixture(scope="module")
def anonymous(local_hub) -> HfApi:
    return HfApi(endpoint=local_hub, token=False)


@pytest.fixture(scope="module")
def alice(local_hub, local_hub_root) -> HfApi:
    """A second account, added while the server runs."""
    return HfApi(endpoint=local_hub, token=local.add_user(local_hub_root, f"alice-{uuid.uuid4().hex[:6]}"))


@pytest.fixture(scope="module")
def public_repo(owner) -> tuple[str, str]:
    """A public dataset of ``local`` with one commit on main: (repo id, main's sha)."""
    repo_id = _unique("local", "public")
    owner.create_repo(repo_id, repo_type="dataset")
    sha = owner.create_commit(repo_id, repo_type="dataset", commit_message="base",
                              operations=[CommitOperationAdd("notes.txt", b"public notes\n")]).oid
    return repo_id, sha


@pytest.fixture(scope="module")
def private_repo(owner) -> str:
    repo_id = _unique("local", "private")
    owner.create_repo(repo_id, repo_type="dataset", private=True)
    owner.create_commit(repo_id, repo_type="dataset", commit_message="secret",
                        operations=[CommitOperationAdd("secret.txt", b"secret\n")])
    return repo_id


# -- tokens ---------------------------------------------------------------------------------------------------------
def test_writes_need_a_token_this_hub_gave(local_hub, owner, anonymous, public_repo):
    repo_id, sha = public_repo
    stranger = HfApi(endpoint=local_hub, token=new_token())  # well formed, never given by this hub
    attempts = [
        lambda api: api.create_repo(_unique("local", "nope"), repo_type="dataset"),
        lambda api: api.create_commit(repo_id, repo_type="dataset", commit_message="x",
                                      operations=[CommitOperationAdd("x.txt", b"x")]),
        lambda api: api.create_tag(repo_id, repo_type="dataset", tag="nope"),
        lambda api: api.create_pull_request(repo_id, title="Nope", repo_type="dataset"),
        lambda api: api.delete_repo(repo_id, repo_type="dataset"),
    ]
    for api in (anonymous, stranger):
        for attempt in attempts:
            with pytest.raises(HfHubHTTPError) as err:
                attempt(api)
            assert err.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError, match="Invalid user token"):  # the client's words for a 401 on whoami
        stranger.whoami()
    status, _, _ = _raw("GET", f"{local_hub}/api/whoami-v2")
    assert status == 401
    assert owner.dataset_info(repo_id).sha == sha and owner.list_repo_refs(repo_id, repo_type="dataset").tags == []
    assert list(owner.get_repo_discussions(repo_id, repo_type="dataset")) == []


def test_whoami_names_the_account_and_its_write_token(owner, alice, public_repo):
    me = owner.whoami()
    assert (me["name"], me["type"], me["auth"]["accessToken"]["role"]) == ("local", "user", "write")
    assert all(org["type"] == "org" and org["roleInOrg"] == "admin" for org in me["orgs"])
    other = alice.whoami()
    assert other["name"].startswith("alice-") and other["auth"]["accessToken"]["role"] == "write"
    assert other["orgs"] == []


def test_add_user_refuses_taken_names(local_hub_root, alice, owner, public_repo):
    for taken in ("local", alice.whoami()["name"]):
        with pytest.raises(ValueError, match="taken"):
            local.add_user(local_hub_root, taken)
    organization = f"org-{uuid.uuid4().hex[:6]}"  # a namespace that is no account's: the default account's org
    owner.create_repo(f"{organization}/data", repo_type="dataset")
    assert organization in [org["name"] for org in owner.whoami()["orgs"]]
    with pytest.raises(ValueError, match="taken"):
        local.add_user(local_hub_root, organization)


# -- reads and private repos ----------------------------------------------------------------------------------------
def test_public_repos_read_without_token_private_ones_only_by_their_owner(tmp_path, owner, anonymous, alice,
                                                                          public_repo, private_repo):
    repo_id, sha = public_repo
    assert anonymous.dataset_info(repo_id).sha == sha
    assert Path(hf_hub_download(repo_id, "notes.txt", repo_type="dataset", token=False,
                                cache_dir=tmp_path)).read_bytes() == b"public notes\n"
    assert owner.dataset_info(private_repo).private is True and owner.dataset_info(repo_id).private is False
    for api in (anonymous, alice):
        for read in (lambda: api.dataset_info(private_repo),
                     lambda: api.list_repo_files(private_repo, repo_type="dataset"),
                     lambda: api.list_repo_refs(private_repo, repo_type="dataset"),
                     lambda: hf_hub_download(private_repo, "secret.txt", repo_type="dataset", token=api.token,
                                             cache_dir=tmp_path / "other")):
            with pytest.raises(RepositoryNotFoundError):
                read()
    with pytest.raises(RepositoryNotFoundError):  # nor can she write to it: it does not exist for her
        alice.create_pull_request(private_repo, title="Let me in", repo_type="dataset")
    # olah's routes we do not override see the same repos (a HEAD of the commits list is one of them).
    status, _, _ = _raw("HEAD", f"{owner.endpoint}/api/datasets/{private_repo}/commits/main")
    assert status in (401, 404)
    assert private_repo not in json.loads(_raw("GET", f"{owner.endpoint}/repos")[2])["datasets"]


# -- a second account: pull requests yes, main no; authorship visible ----------------------------------------------
def test_second_account_opens_and_commits_to_its_pull_request_only(owner, alice, public_repo):
    repo_id, _ = public_repo
    name = alice.whoami()["name"]
    head = owner.dataset_info(repo_id).sha
    for attempt in (
        lambda: alice.create_commit(repo_id, repo_type="dataset", commit_message="to main",
                                    operations=[CommitOperationAdd("x.txt", b"x")]),
        lambda: alice.create_tag(repo_id, repo_type="dataset", tag="alice"),
        lambda: alice.create_branch(repo_id, repo_type="dataset", branch="alice"),
        lambda: alice.delete_repo(repo_id, repo_type="dataset"),
        lambda: alice.create_repo(_unique("local", "not-hers"), repo_type="dataset"),
    ):
        with pytest.raises(HfHubHTTPError) as err:
            attempt()
        assert err.value.response.status_code == 403
    assert owner.dataset_info(repo_id).sha == head

    pr = alice.create_pull_request(repo_id, title="Alice's run", description="plan", repo_type="dataset")
    assert pr.author == name and pr.events[0].author == name
    shard = alice.create_commit(repo_id, repo_type="dataset", revision=pr.git_reference, commit_message="shard 0",
                                commit_description='{"shard": 0}',
                                operations=[CommitOperationAdd("data/shard-0.bin", bytes(range(256)))]).oid
    commits = owner.list_repo_commits(repo_id, repo_type="dataset", revision=pr.git_reference)
    assert (commits[0].commit_id, commits[0].authors) == (shard, [name])
    assert commits[1].authors == ["local"]  # main's commit, made by the owner
    [listed] = [d for d in owner.get_repo_discussions(repo_id, repo_type="dataset", author=name)]
    assert (listed.num, listed.author) == (pr.num, name)
    details = owner.get_discussion_details(repo_id, pr.num, repo_type="dataset")
    assert [(e.type, e.author) for e in details.events] == [("comment", name), ("commit", name)]
    alice.comment_discussion(repo_id, pr.num, "all shards in", repo_type="dataset")
    alice.change_discussion_status(repo_id, pr.num, new_status="open", repo_type="dataset")  # publish its draft
    with pytest.raises(HfHubHTTPError) as err:
        alice.merge_pull_request(repo_id, pr.num, repo_type="dataset")
    assert err.value.response.status_code == 403

    # The owner's own pull request is not hers to commit to or close; her comments are not the owner's to edit.
    owners_pr = owner.create_pull_request(repo_id, title="Owner's run", repo_type="dataset")
    owners_comment = owner.comment_discussion(repo_id, owners_pr.num, "mine", repo_type="dataset")
    for attempt in (
        lambda: alice.create_commit(repo_id, repo_type="dataset", revision=owners_pr.git_reference,
                                    commit_message="sneak", operations=[CommitOperationAdd("y.txt", b"y")]),
        lambda: alice.change_discussion_status(repo_id, owners_pr.num, new_status="closed", repo_type="dataset"),
        lambda: alice.rename_discussion(repo_id, owners_pr.num, "Renamed", repo_type="dataset"),
        lambda: alice.edit_discussion_comment(repo_id, owners_pr.num, owners_comment.id, "hers", repo_type="dataset"),
    ):
        with pytest.raises(HfHubHTTPError) as err:
            attempt()
        assert err.value.response.status_code == 403

    owner.merge_pull_request(repo_id, pr.num, repo_type="dataset")
    merged = owner.list_repo_commits(repo_id, repo_type="dataset")[0]
    assert merged.title == "Alice's run (#1)" and merged.authors == ["local"]  # the merge is the owner's act
    assert owner.get_discussion_details(repo_id, pr.num, repo_type="dataset").events[-1].author == "local"
    # create_commit(create_pr=True) opens a pull request in her name too.
    opened = alice.create_commit(repo_id, repo_type="dataset", create_pr=True, commit_message="Alice's fix",
                                 operations=[CommitOperationAdd("fix.txt", b"fix")])
    assert owner.get_discussion_details(repo_id, opened.pr_num, repo_type="dataset").author == name


def test_each_account_owns_its_namespace(owner, alice):
    name = alice.whoami()["name"]
    repo_id = f"{name}/own"
    alice.create_repo(repo_id, repo_type="dataset")
    alice.upload_file(path_or_fileobj=b"hers", path_in_repo="a.txt", repo_id=repo_id, repo_type="dataset")
    with pytest.raises(HfHubHTTPError) as err:  # the default account administers organizations, not accounts
        owner.upload_file(path_or_fileobj=b"no", path_in_repo="b.txt", repo_id=repo_id, repo_type="dataset")
    assert err.value.response.status_code == 403
    assert owner.list_repo_commits(repo_id, repo_type="dataset")[0].authors == [name]


# -- CSRF and DNS rebinding -----------------------------------------------------------------------------------------
def test_cross_origin_and_form_type_commits_are_refused(local_hub, owner, public_repo):
    repo_id, _ = public_repo
    before = owner.dataset_info(repo_id).sha
    url = f"{local_hub}/api/datasets/{repo_id}/commit/main"
    body = _ndjson_commit("csrf", {"pwned.txt": b"pwned"})
    auth = {"Authorization": f"Bearer {os.environ['HF_TOKEN']}"}  # even with the token: the checks come first
    cross_site = {**auth, "Content-Type": "text/plain", "Origin": "http://evil.example"}  # what a web page can send
    status, headers, _ = _raw("POST", url, body, cross_site)
    assert status == 403 and "Cross-origin" in headers["x-error-message"]
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        status, _, _ = _raw("POST", url, body, {**auth, "Content-Type": content_type})
        assert status == 415
    status, _, _ = _raw("POST", f"{local_hub}/api/repos/delete", json.dumps(
        {"name": repo_id.split("/")[1], "organization": "local", "type": "dataset"}).encode(),
        {**auth, "Content-Type": "application/json", "Origin": "null"})
    assert status == 403
    assert owner.dataset_info(repo_id).sha == before and "pwned.txt" not in owner.list_repo_files(
        repo_id, repo_type="dataset")
    # The server's own origin, the client's content type: the same commit goes through.
    status, _, _ = _raw("POST", url, body, {**auth, "Content-Type": "application/x-ndjson", "Origin": local_hub})
    assert status == 200 and "pwned.txt" in owner.list_repo_files(repo_id, repo_type="dataset")


def test_requests_for_another_host_name_are_refused(local_hub, public_repo):
    repo_id, _ = public_repo
    port = local_hub.rsplit(":", 1)[1]
    for host in (f"evil.example:{port}", f"127.0.0.1.nip.io:{port}", "evil.example"):
        status, headers, _ = _raw("GET", f"{local_hub}/api/datasets/{repo_id}", headers={"Host": host})
        assert status == 403 and "Host" in headers["x-error-message"]
    # a loopback name on another port: a reverse proxy on this machine (tests/fault_proxy.py) forwards its own Host
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "127.0.0.1:1"):
        assert _raw("GET", f"{local_hub}/api/datasets/{repo_id}", headers={"Host": host})[0] == 200


# -- caps -----------------------------------------------------------------------------------------------------------
def test_inline_file_over_the_hub_limit_is_413(local_hub, owner, public_repo):
    repo_id, _ = public_repo
    body = _ndjson_commit("too big inline", {"big.txt": b"x" * (10 * 1024 * 1024 + 1)})
    status, headers, _ = _raw("POST", f"{local_hub}/api/datasets/{repo_id}/commit/main", body, {
        "Authorization": f"Bearer {os.environ['HF_TOKEN']}", "Content-Type": "application/x-ndjson"})
    assert status == 413 and "big.txt" in headers["x-error-message"]
    assert "big.txt" not in owner.list_repo_files(repo_id, repo_type="dataset")


@pytest.fixture(scope="module")
def small_hub(tmp_path_factory):
    """A hub of its own with small caps, a page of 2 repos and an access log: (url, root, token)."""
    root = tmp_path_factory.mktemp("small-hub")
    token = new_token()
    url = local.start(root, port=free_port(), token=token, access_log=root / "access.jsonl",
                      max_commit_bytes=256 * 1024, max_lfs_bytes=1024 * 1024, max_json_bytes=64 * 1024,
                      listing_page_size=2)
    yield url, root, token
    local.stop(root)


def test_bodies_over_their_caps_are_413(small_hub):
    url, _, token = small_hub
    api = HfApi(endpoint=url, token=token)
    repo_id = _unique("local", "capped")
    api.create_repo(repo_id, repo_type="dataset")
    head = api.dataset_info(repo_id).sha
    with pytest.raises(HfHubHTTPError) as err:  # a regular file the client sends inline: a 300 kB commit body
        api.upload_file(path_or_fileobj=b"y" * 300_000, path_in_repo="big.txt", repo_id=repo_id, repo_type="dataset")
    assert err.value.response.status_code == 413
    with pytest.raises(ValueError, match="larger than this Hub accepts"):  # the LFS batch refuses a 2 MiB object
        api.upload_file(path_or_fileobj=os.urandom(2 * 1024 * 1024), path_in_repo="big.bin", repo_id=repo_id,
                        repo_type="dataset")
    assert api.dataset_info(repo_id).sha == head
    status, _, _ = _raw("POST", f"{url}/api/validate-yaml", json.dumps({"content": "x" * 100_000}).encode(),
                        {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    assert status == 413
    # Within the caps, the same calls go through.
    api.upload_file(path_or_fileobj=b"y" * 1000, path_in_repo="small.txt", repo_id=repo_id, repo_type="dataset")
    api.upload_file(path_or_fileobj=os.urandom(1000), path_in_repo="small.bin", repo_id=repo_id, repo_type="dataset")


def test_lfs_upload_beyond_its_announced_size_is_413(small_hub):
    url, root, token = small_hub
    api = HfApi(endpoint=url, token=token)
    repo_id = _unique("local", "lfs")
    api.create_repo(repo_id, repo_type="dataset")
    data = os.urandom(1000)
    oid = hashlib.sha256(data).hexdigest()
    batch = json.dumps({"operation": "upload", "transfers": ["basic"], "objects": [{"oid": oid, "size": 100}]})
    status, _, answer = _raw("POST", f"{url}/datasets/{repo_id}.git/info/lfs/objects/batch", batch.encode(), {
        "Authorization": f"Bearer {token}", "Content-Type": "application/vnd.git-lfs+json"})
    assert status == 200
    upload = json.loads(answer)["objects"][0]["actions"]["upload"]["href"]
    assert _raw("PUT", upload, data)[0] == 413  # 1000 bytes where the batch call announced 100
    assert _raw("PUT", upload.split("?")[0], data)[0] == 403  # an upload URL is only good with its signature
    lfs = root / "mirrors" / "datasets" / repo_id / ".git" / "lfs"
    assert not list(lfs.glob("objects/*/*/*")) and not list(lfs.glob("tmp/*"))  # nothing kept, nothing left over


# -- listings -------------------------------------------------------------------------------------------------------
def test_list_models_and_datasets_return_published_repos(owner, anonymous, alice, public_repo, private_repo):
    model_id = _unique("local", "listed-model")
    owner.create_repo(model_id)
    owner.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id=model_id)
    models = {m.id: m for m in owner.list_models(author="local")}
    assert models[model_id].sha == owner.model_info(model_id).sha and models[model_id].author == "local"
    assert models[model_id].last_modified is not None and models[model_id].created_at is not None
    datasets = {d.id: d for d in owner.list_datasets(author="local")}
    assert {public_repo[0], private_repo} <= set(datasets) and model_id not in datasets
    assert datasets[private_repo].private is True and datasets[public_repo[0]].sha == owner.dataset_info(
        public_repo[0]).sha
    for api in (anonymous, alice):  # a private repo is listed for its owner only
        listed = {d.id for d in api.list_datasets(author="local")}
        assert public_repo[0] in listed and private_repo not in listed
    assert [d.id for d in owner.list_datasets(search=public_repo[0].split("/")[1].upper())] == [public_repo[0]]
    assert list(owner.list_datasets(author="nobody-here")) == []


def test_listings_page_through_the_link_header(small_hub):
    url, _, token = small_hub
    api = HfApi(endpoint=url, token=token)
    names = [f"local/paged-{i}" for i in range(5)]
    for name in names:
        api.create_repo(name, repo_type="dataset")
    status, headers, body = _raw("GET", f"{url}/api/datasets?author=local&search=paged")
    assert status == 200 and len(json.loads(body)) == 2 and 'rel="next"' in headers["link"]
    assert [d.id for d in api.list_datasets(author="local", search="paged")] == names  # 3 pages, followed
    newest_first = [d.id for d in api.list_datasets(search="paged", sort="created_at")]
    assert newest_first == names[::-1]
    assert [d.id for d in api.list_datasets(search="paged", limit=3)] == names[:3]


# -- logs and the command line --------------------------------------------------------------------------------------
def test_tokens_stay_out_of_logs_state_and_command_lines(small_hub):
    url, root, token = small_hub
    HfApi(endpoint=url, token=token).whoami()  # at least one request carried it
    state = json.loads((root / "hub.json").read_text())
    for text in ((root / "access.jsonl").read_text(), (root / "hub.log").read_text(), json.dumps(state),
                 Path(f"/proc/{state['pid']}/cmdline").read_bytes().decode(errors="replace")):
        assert token not in text
    assert stat.S_IMODE((root / "tokens.json").stat().st_mode) == 0o600
    assert json.loads((root / "tokens.json").read_text()) == {token: "local"}


def test_hub_start_on_a_network_address_warns_and_env_prints_the_token(tmp_path, capsys):
    root = tmp_path / "hub"
    port = free_port()
    assert cli.main(["hub", "start", "--root", str(root), "--host", "0.0.0.0", "--port", str(port)]) == 0
    try:
        warning = capsys.readouterr().err.strip()
        assert warning.startswith("WARNING:") and "reachable from the network" in warning and "token" in warning
        assert (root / "hub.log").read_text().count("reachable from the network") == 1
        assert cli.main(["hub", "env", "--root", str(root)]) == 0
        exported = dict(item.split("=", 1) for item in capsys.readouterr().out.split()[1:])
        assert exported["HF_TOKEN"] == local.token(root) and exported["HF_ENDPOINT"] == f"http://0.0.0.0:{port}"
        api = HfApi(endpoint=f"http://127.0.0.1:{port}", token=exported["HF_TOKEN"])  # loopback names still work
        assert api.whoami()["name"] == "local"
    finally:
        local.stop(root)
    assert cli.main(["hub", "start", "--root", str(root), "--port", str(free_port())]) == 0
    try:
        assert "WARNING" not in capsys.readouterr().err  # loopback: no warning
        assert local.token(root) == exported["HF_TOKEN"]  # a restart keeps the account's token
    finally:
        local.stop(root)
