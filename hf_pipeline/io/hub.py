"""Everything that touches the Hub or the disk for datasets: resolving refs, loading, publishing.

One code path for huggingface.co and the local Hub alike: the real `huggingface_hub`/`datasets`
clients, pointed wherever `HF_ENDPOINT` says. Importing this module makes their every request retry transient
failures (`hub_retry`: every process that reaches the Hub through the pipeline imports it first).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_pipeline.errors import PipelineError
from hf_pipeline.io import retry as hub_retry

hub_retry.install()  # before any Hub call of this process (see hub_retry's docstring)

LOCAL_DATA_EXTENSIONS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class DatasetRef:
    """A dataset input pinned to exactly what was read: a Hub repo at a commit, or local files by content hash."""

    ref: str  # what the user wrote
    repo_id: str | None  # None for local paths
    revision: str | None  # what the user asked for (branch, tag, sha); None = default branch
    sha: str  # resolved commit sha, or content hash of local files
    path: str | None = None  # local path

    @property
    def pinned(self) -> str:
        return f"{self.repo_id}@{self.sha}" if self.repo_id else f"{self.path}#{self.sha}"

    def card_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, "repo_id": self.repo_id, "revision": self.revision, "sha": self.sha, "path": self.path}


def split_ref(ref: str) -> tuple[str, str | None]:
    """'org/name@rev' -> ('org/name', 'rev'); 'org/name' -> ('org/name', None)."""
    if "@" in ref:
        repo, rev = ref.rsplit("@", 1)
        return repo, rev or None
    return ref, None


def hf_api():
    from huggingface_hub import HfApi

    return HfApi()


def _hash_files(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def local_data_files(path: Path) -> tuple[str, list[Path]] | None:
    """(builder, files) for a local data file or a folder of them; None when `path` holds no data files."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    by_builder: dict[str, list[Path]] = {}
    for f in files:
        builder = LOCAL_DATA_EXTENSIONS.get(f.suffix.lower())
        if builder:
            by_builder.setdefault(builder, []).append(f)
    if not by_builder:
        return None
    if len(by_builder) > 1:
        raise PipelineError(f"{path} mixes data file formats ({', '.join(sorted(by_builder))}); keep one format per input.")
    builder, found = next(iter(by_builder.items()))
    return builder, found


def resolve_dataset(ref: str) -> DatasetRef:
    """Pin `ref` (org/name, org/name@revision, or a local path) to an exact commit or content hash."""
    local = Path(ref).expanduser()
    if local.exists():
        if local.is_dir() and (local / "dataset_info.json").exists():
            files = sorted(p for p in local.iterdir() if p.suffix == ".arrow" or p.name.endswith(".json"))
            return DatasetRef(ref, None, None, _hash_files(files), str(local))
        found = local_data_files(local)
        if found is None:
            raise PipelineError(
                f"{ref} is not a dataset: expected a folder saved with Dataset.save_to_disk, or "
                f"{'/'.join(LOCAL_DATA_EXTENSIONS)} files."
            )
        return DatasetRef(ref, None, None, _hash_files(found[1]), str(local))
    repo_id, revision = split_ref(ref)
    if not _REPO_ID.match(repo_id):
        raise PipelineError(f"input '{ref}' is neither an existing local path nor a Hub dataset id of the form org/name[@revision].")
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = hf_api().dataset_info(repo_id, revision=revision)
    except RevisionNotFoundError:
        raise PipelineError(f"dataset {repo_id} has no revision '{revision}'.") from None
    except RepositoryNotFoundError:
        raise PipelineError(f"dataset repo {repo_id} does not exist (or you have no access) on {endpoint()}.") from None
    return DatasetRef(ref, repo_id, revision, info.sha)


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def load_dataset_ref(ref: DatasetRef, split: str = "train", name: str | None = None):
    """Load exactly the pinned version of `ref` as a `datasets.Dataset`."""
    import datasets

    try:
        if ref.repo_id is None:
            path = Path(ref.path)
            if path.is_dir() and (path / "dataset_info.json").exists():
                ds = datasets.load_from_disk(str(path))
                if isinstance(ds, datasets.DatasetDict):
                    ds = _pick_split(ds, split, ref.ref)
                return ds
            builder, files = local_data_files(path)
            return datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train")
        dsd = datasets.load_dataset(ref.repo_id, name=name, revision=ref.sha)
        return _pick_split(dsd, split, ref.ref)
    except PipelineError:
        raise
    except ValueError as e:
        if "corresponds to no data" not in str(e) or ref.repo_id is None:
            raise PipelineError(f"could not load {ref.ref} as a dataset: {type(e).__name__}: {e}") from e
        return _empty_published_dataset(ref, name)
    except Exception as e:  # datasets raises many types for unreadable data; name the input, keep the cause
        raise PipelineError(f"could not load {ref.ref} as a dataset: {type(e).__name__}: {e}") from e


def _empty_published_dataset(ref: DatasetRef, name: str | None):
    """A published output with zero rows (e.g. nothing passed a filter), which `datasets` refuses to load:
    an empty Dataset with the columns of its (empty) parquet file, so the next stage sees a valid input."""
    import datasets
    import pyarrow.parquet as pq
    from huggingface_hub import hf_hub_download

    prefix = "data/train-" if name in (None, "default") else f"data/{name}-"
    files = [f for f in hf_api().list_repo_files(ref.repo_id, repo_type="dataset", revision=ref.sha) if f.startswith(prefix)]
    if not files:
        raise PipelineError(f"dataset {ref.ref} has no data files under {prefix}*.")
    schema = pq.read_schema(hf_hub_download(ref.repo_id, files[0], repo_type="dataset", revision=ref.sha))
    features = datasets.Features.from_arrow_schema(schema)
    return datasets.Dataset.from_dict({column: [] for column in features}, features=features)


def _pick_split(dsd, split: str, what: str):
    if split not in dsd:
        raise PipelineError(f"dataset {what} has no split '{split}' (splits: {', '.join(dsd)}).")
    return dsd[split]


def download_file(ref: DatasetRef, filename: str) -> Path:
    """`filename` from a pinned dataset input: the Hub file at the pinned commit, or the file in the local folder."""
    if ref.repo_id is None:
        path = Path(ref.path) / filename
        if not path.exists():
            raise PipelineError(f"{ref.ref} has no file '{filename}'.")
        return path
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(ref.repo_id, filename, repo_type="dataset", revision=ref.sha))
    except EntryNotFoundError:
        raise PipelineError(f"dataset {ref.ref} has no file '{filename}' at {ref.sha[:12]}.") from None


def output_tags(repo_id: str, repo_type: str = "dataset") -> dict[str, str]:
    """tag name -> commit sha for an output repo ({} when the repo does not exist yet)."""
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        refs = hf_api().list_repo_refs(repo_id, repo_type=repo_type)
    except RepositoryNotFoundError:
        return {}
    return {t.name: t.target_commit for t in refs.tags}


def load_card(repo_id: str, revision: str | None = None, repo_type: str = "dataset"):
    """The dataset (or model) card of `repo_id` as it was at `revision` (a tag, branch or sha)."""
    from huggingface_hub import DatasetCard, ModelCard, hf_hub_download

    card_class = DatasetCard if repo_type == "dataset" else ModelCard
    return card_class.load(hf_hub_download(repo_id, "README.md", repo_type=repo_type, revision=revision))


def read_card_metadata(repo_id: str, revision: str, repo_type: str = "dataset") -> dict[str, Any]:
    return load_card(repo_id, revision, repo_type).data.to_dict()


def publish(
    repo_id: str,
    data_files: list[Path],
    card_text: str,
    tag: str,
    commit_message: str,
    extra_files: dict[str, Path] | None = None,
    private: bool = False,
) -> str:
    """One commit that replaces the repo's data with `data_files` (as data/...) plus the card, then the tag.

    Returns the commit sha. Old files under data/ are deleted in the same commit so the tagged
    revision holds exactly this run's rows.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    api = hf_api()
    api.create_repo(repo_id, repo_type="dataset", exist_ok=True, private=private)
    existing = set(api.list_repo_files(repo_id, repo_type="dataset"))
    new_paths = {f"data/{f.name}": f for f in data_files}
    new_paths.update(extra_files or {})
    ops: list[Any] = [
        CommitOperationDelete(path_in_repo=p) for p in sorted(existing) if p.startswith("data/") and p not in new_paths
    ]
    ops += [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(f)) for p, f in sorted(new_paths.items())]
    ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card_text.encode()))
    info = api.create_commit(repo_id, ops, commit_message=commit_message, repo_type="dataset")
    api.create_tag(repo_id, tag=tag, revision=info.oid, repo_type="dataset", tag_message=commit_message)
    return info.oid


def publish_model(repo_id: str, folder: Path, card_text: str, tag: str, commit_message: str, private: bool = False) -> str:
    """One commit that makes the model repo hold exactly `folder`'s files plus the card, then the tag.

    Returns the commit sha. Files of an earlier version that this one lacks are deleted in the same commit,
    so the tagged revision is this model and nothing else (`.gitattributes` stays)."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    api = hf_api()
    api.create_repo(repo_id, repo_type="model", exist_ok=True, private=private)
    existing = set(api.list_repo_files(repo_id, repo_type="model"))
    new_paths = {f.relative_to(folder).as_posix(): f for f in sorted(folder.rglob("*")) if f.is_file()}
    new_paths.pop("README.md", None)  # the card below is the README
    ops: list[Any] = [
        CommitOperationDelete(path_in_repo=p)
        for p in sorted(existing)
        if p not in new_paths and p not in ("README.md", ".gitattributes")
    ]
    ops += [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(f)) for p, f in new_paths.items()]
    ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card_text.encode()))
    info = api.create_commit(repo_id, ops, commit_message=commit_message, repo_type="model")
    api.create_tag(repo_id, tag=tag, revision=info.oid, repo_type="model", tag_message=commit_message)
    return info.oid


def token_free_argv(argv: list[str]) -> list[str]:
    """The command line for cards and logs, with anything that looks like a token masked."""
    masked = []
    for a in argv:
        a = re.sub(r"\bhf_[A-Za-z0-9]{30,}", "hf_***", a)  # Hub tokens: hf_ + 34 letters/digits
        a = re.sub(r"(?i)(token|api_key|key)=\S+", r"\1=***", a)
        masked.append(a)
    return masked


def cache_root() -> Path:
    return Path(os.environ.get("HF_PIPELINE_CACHE", Path.home() / ".cache" / "hf_pipeline"))


def push_local_dataset(path: str, repo_id: str, tag: str | None = None) -> tuple[str, str, str]:
    """Publish local data files (e.g. a shipped sample) as a versioned dataset repo; a README.md beside them
    becomes the card (its attribution travels with the data). Idempotent: same content, same tag, no new commit."""

    ref = resolve_dataset(path)
    tag = tag or f"v-{ref.sha[:10]}"
    tags = output_tags(repo_id)
    if tag in tags:
        return repo_id, tag, tags[tag]
    ds = load_dataset_ref(ref)
    out = cache_root() / "push" / ref.sha
    out.mkdir(parents=True, exist_ok=True)
    data_file = out / "train-00000-of-00001.parquet"
    ds.to_parquet(str(data_file))
    local = Path(path)
    readme = (local if local.is_dir() else local.parent) / "README.md"
    body = readme.read_text() if readme.exists() else f"Data published from `{local.name}`.\n"
    from huggingface_hub import DatasetCard, DatasetCardData

    card_data = DatasetCardData(
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
        hf_pipeline={"pushed_from": local.name, "content_hash": ref.sha, "rows": len(ds)},
    )
    card = DatasetCard.from_template(card_data, template_str="---\n{{ card_data }}\n---\n\n" + body)
    commit = publish(repo_id, [data_file], str(card), tag, commit_message=f"publish {local.name} ({len(ds)} rows)")
    return repo_id, tag, commit
