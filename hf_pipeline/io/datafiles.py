"""An input's data files at its pinned revision: listing them with their row counts, and reading rows of them.

Listing reads parquet footers only (through `HfFileSystem`'s range requests on the Hub), never the data. Reading
is bounded by what is asked: a slice that covers a whole Hub file downloads that file once (into this machine's
Hub cache, at the pinned commit); a slice of part of a file, or a few rows (`read_rows`), reads only the row
groups that hold them, by range requests. Local inputs (a parquet/jsonl/json/csv file or folder, a
`save_to_disk` folder) are read in place.

Only data that is truly not there is `MissingData` (a file the revision does not hold, a row past a file's end): a
stage may turn that into a row status. Anything else, a 429, a 5xx or a lost connection that the Hub client's
retries (`hub_retry`) did not get past, is raised as it came and fails the task; the run's retry or resume takes
over, and no row is ever written as missing because the Hub was busy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from hf_pipeline.errors import PipelineError
from hf_pipeline.io.hub import DatasetRef, local_data_files
from hf_pipeline.io.sharding import DataFile, FileSlice

# Position columns the runner adds to every chunk it reads: where each row lives in its input
FILE_COLUMN, ROW_COLUMN = "_input_file", "_input_row"


class MissingData(PipelineError):
    """The data asked for is not in the input at its pinned revision: the file (`rows` None), or some rows of a file
    (`rows`: {row: why}, the others exist)."""

    def __init__(self, message: str, rows: dict[int, str] | None = None):
        super().__init__(message)
        self.rows = rows


@dataclass(frozen=True)
class InputPart:
    """One dataset a stage maps over (most stages have one: --input; collect_queries one per query source)."""

    ref: str  # as written: org/name[@revision] or a local path
    split: str = "train"
    name: str | None = None  # the dataset config
    label: str = ""  # what the stage calls it (e.g. the query source's name)


def hub_url(ref: DatasetRef, path: str) -> str:
    return f"hf://datasets/{ref.repo_id}@{ref.sha}/{path}"


def _hub_data_files(ref: DatasetRef, split: str, name: str | None) -> list[str]:
    """Paths in the repo of the split's data files, resolved by `datasets` exactly as `load_dataset` would."""
    import datasets

    try:
        builder = datasets.load_dataset_builder(ref.repo_id, name=name, revision=ref.sha)
    except Exception as e:  # datasets raises many types for a repo it cannot read as a dataset
        raise PipelineError(f"could not read {ref.ref} as a dataset: {type(e).__name__}: {e}") from e
    files = (builder.config.data_files or {}).get(split)
    if files is None:
        known = ", ".join(builder.config.data_files or {}) or "none"
        raise PipelineError(f"dataset {ref.ref} has no split '{split}' (splits: {known}).")
    prefix = f"hf://datasets/{ref.repo_id}@{ref.sha}/"
    paths = [str(f)[len(prefix):] if str(f).startswith(prefix) else str(f) for f in files]
    wrong = [p for p in paths if not p.endswith(".parquet")]
    if wrong:
        raise PipelineError(
            f"dataset {ref.ref} holds non-parquet data files (e.g. {wrong[0]}): stages read Hub inputs as parquet, whose "
            "footers give row counts without downloading the data. Publish it as parquet (`run_stage.py hub push`), "
            "or read the Hub's own conversion at revision refs/convert/parquet."
        )
    return sorted(paths)


def data_file_paths(ref: DatasetRef, split: str = "train", name: str | None = None) -> list[str]:
    """The data files of one input at its pinned revision, in read order: paths in the Hub repo, or relative to a
    local folder (a single local file: its own name)."""
    return _hub_data_files(ref, split, name) if ref.repo_id is not None else _local_files(Path(ref.path))


def _local_path(ref: DatasetRef, path: str) -> Path:
    """Where a local input's data file lies (a single-file input has only its own name)."""
    root = Path(ref.path)
    if not root.is_dir() and path != root.name:
        raise FileNotFoundError(path)
    return root / path if root.is_dir() else root


def file_metadata(ref: DatasetRef, path: str):
    """(parquet footer, file size in bytes) of one data file: a range read on the Hub, never the data."""
    import pyarrow.parquet as pq

    if ref.repo_id is None:
        full = _local_path(ref, path)
        return pq.read_metadata(str(full)), full.stat().st_size
    from huggingface_hub import HfFileSystem

    with HfFileSystem().open(hub_url(ref, path), "rb", block_size=1 << 16) as fh:
        return pq.read_metadata(fh), fh.size


def describe_file(ref: DatasetRef, path: str, part: int = 0):
    """(DataFile, arrow schema) of one data file: rows and row groups from its parquet footer; a local file of another
    format is counted by reading it (local inputs only)."""
    try:
        if path.endswith(".parquet"):
            meta, size = file_metadata(ref, path)
            groups = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
            return DataFile(path, meta.num_rows, groups, part, size), meta.schema.to_arrow_schema()
        full = _local_path(ref, path)
        table = _read_local_table(full)
        return DataFile(path, table.num_rows, (), part, full.stat().st_size), table.schema
    except (OSError, KeyError) as e:  # HfHubHTTPError is an OSError: only a 404 among those means missing
        if not _is_missing(ref, e):
            raise  # a transient Hub error, past the client's retries: the task fails, the run retries or resumes
        raise MissingData(f"{ref.ref} has no data file {path!r} (at {(ref.sha or '')[:12]}): {type(e).__name__}") from None


def _is_missing(ref: DatasetRef, error: OSError | KeyError) -> bool:
    """Whether reading a file failed because it is not there: any OSError of a local file (or a format we cannot read,
    KeyError); on the Hub, a file not found (what HfFileSystem raises for a 404) or a 404 answer, never a 429, a 5xx
    or a connection error."""
    if isinstance(error, (FileNotFoundError, KeyError)):
        return True
    if ref.repo_id is None:
        return isinstance(error, OSError)
    from huggingface_hub.errors import HfHubHTTPError

    return isinstance(error, HfHubHTTPError) and getattr(error.response, "status_code", None) == 404


def list_files(ref: DatasetRef, split: str = "train", name: str | None = None, part: int = 0):
    """(files in read order, the arrow schema of each) of one input at its pinned revision, from footers (see
    describe_file)."""
    described = [describe_file(ref, path, part) for path in data_file_paths(ref, split, name)]
    return [f for f, _ in described], [schema for _, schema in described]


def _local_files(root: Path) -> list[str]:
    """Data files of a local input, relative to it (a single file: its own name)."""
    if root.is_dir() and (root / "state.json").exists():  # Dataset.save_to_disk
        state = json.loads((root / "state.json").read_text())
        return [f["filename"] for f in state.get("_data_files", [])]
    found = local_data_files(root)
    if found is None:
        raise PipelineError(f"{root} holds no data files.")
    return [f.relative_to(root).as_posix() if root.is_dir() else f.name for f in found[1]]


def _read_local_table(path: Path):
    """A whole local non-parquet data file as an arrow table (jsonl/json/csv; arrow stream from save_to_disk)."""
    import pyarrow as pa

    if path.suffix == ".arrow":
        with pa.memory_map(str(path)) as source:
            return pa.ipc.open_stream(source).read_all()
    import datasets

    builder = {".jsonl": "json", ".json": "json", ".csv": "csv"}[path.suffix.lower()]
    return datasets.load_dataset(builder, data_files=[str(path)], split="train").data.table


class FileReader:
    """Reads slices and single rows of one input's files, downloading or streaming only what is asked.

    Sequential slices of a file (a shard's chunks) continue from a kept cursor instead of re-reading the file from
    its start; row groups read for `read_rows` are kept (a few) for the next call."""

    def __init__(self, ref: DatasetRef, files: list[DataFile], columns: list[str] | None = None,
                 whole: set[int] = frozenset(), describe_missing: bool = False):
        self.ref, self.files, self.columns = ref, list(files) if describe_missing else files, columns
        self.whole = whole  # files this reader will read from start to end (a shard's own files): downloaded once
        self.describe_missing = describe_missing  # a file not listed is described (its footer) when first asked
        self._local: dict[int, str] = {}
        self._cursor: tuple[int, int, Iterator] | None = None  # (file, next row, batch iterator)
        self._pending = None  # rows read past the last slice's end (a table), handed to the next slice
        self._groups: dict[tuple[int, int], object] = {}  # (file, row group) -> table, the last few read
        self._by_path = {f.path: i for i, f in enumerate(files)}
        self._missing: dict[str, str] = {}  # path -> why it is missing: asked once, however many rows point at it
        self._handle = None  # the open file handle of the cursor, closed when the cursor moves to another file

    # ------------------------------------------------------------------ opening files
    def _source(self, file: int, whole: bool):
        """A path or file object for pyarrow: the downloaded file when the whole file is wanted (read once, cached
        by the Hub client), else a range-reading HfFileSystem handle."""
        path = self.files[file].path
        if self.ref.repo_id is None:
            return str(_local_path(self.ref, path))
        if file in self._local:
            return self._local[file]
        if whole:
            from huggingface_hub import hf_hub_download

            self._local[file] = hf_hub_download(self.ref.repo_id, path, repo_type="dataset", revision=self.ref.sha)
            return self._local[file]
        from huggingface_hub import HfFileSystem

        return HfFileSystem().open(hub_url(self.ref, path), "rb", block_size=8 << 20)

    def _parquet(self, file: int, whole: bool):
        import pyarrow.parquet as pq

        return pq.ParquetFile(self._source(file, whole))

    def _read_group(self, file: int, group: int, columns=None):
        """One row group of a file, read by range through a handle closed at once. `columns`: names, or a function
        of the ParquetFile giving them. (An HfFileSystem handle keeps its read-ahead block, megabytes, in a reference
        cycle with its cache that only the cyclic GC breaks: handles dropped unclosed pile up between collections.)"""
        import pyarrow.parquet as pq

        source = self._source(file, whole=False)
        try:
            pf = pq.ParquetFile(source)
            return pf.read_row_group(group, columns=columns(pf) if callable(columns) else columns)
        finally:
            _close(source)

    # ------------------------------------------------------------------ slices
    def read_slice(self, s: FileSlice):
        """Rows [start, stop) of a file as an arrow table, with the position columns added."""
        import pyarrow as pa

        info = self.files[s.file]
        if not info.path.endswith(".parquet"):
            table = _read_local_table(_local_path(self.ref, info.path)).slice(s.start, s.rows)
            if self.columns:
                table = table.select([c for c in self.columns if c in table.column_names])
        else:
            table = self._read_parquet_slice(s, whole=s.file in self.whole)
        rows = pa.array(range(s.start, s.stop), pa.int64())
        return table.append_column(FILE_COLUMN, pa.array([info.path] * s.rows, pa.string())).append_column(ROW_COLUMN, rows)

    def _read_parquet_slice(self, s: FileSlice, whole: bool):
        import pyarrow as pa

        if self._cursor is None or self._cursor[:2] != (s.file, s.start):
            self._cursor = self._open_cursor(s, whole)
            self._pending = None
        batches = self._cursor[2]
        pieces = [self._pending] if self._pending is not None else []
        have = sum(p.num_rows for p in pieces)
        while have < s.rows:
            batch = next(batches, None)
            if batch is None:
                break
            pieces.append(pa.Table.from_batches([batch]))
            have += batch.num_rows
        table = pa.concat_tables(pieces) if pieces else self._empty(s.file)
        self._pending = table.slice(s.rows) if table.num_rows > s.rows else None
        self._cursor = (s.file, s.stop, batches)
        return table.slice(0, s.rows)

    def _open_cursor(self, s: FileSlice, whole: bool):
        """A batch iterator starting exactly at row `start` of the file: whole row groups before it are skipped
        without reading them, rows of the first row group before it are dropped. The previous cursor's handle is
        closed (see `_read_group`)."""
        import pyarrow.parquet as pq

        if self._cursor is not None:  # its generator holds the file's decoded pages: freed now, not at the next GC
            self._cursor[2].close()
        _close(self._handle)
        self._handle = self._source(s.file, whole)
        pf = pq.ParquetFile(self._handle)
        groups = self.files[s.file].row_groups or (self.files[s.file].rows,)
        first, offset = 0, 0
        while first < len(groups) and offset + groups[first] <= s.start:
            offset += groups[first]
            first += 1
        skip, columns = s.start - offset, self._columns(pf)

        def batches():  # refers to no attribute of the reader: a generator kept on `self` must not form a cycle
            to_skip = skip
            for batch in pf.iter_batches(batch_size=8192, row_groups=range(first, len(groups)), columns=columns):
                if to_skip >= batch.num_rows:
                    to_skip -= batch.num_rows
                    continue
                if to_skip:
                    batch, to_skip = batch.slice(to_skip), 0
                yield batch

        return (s.file, s.start, batches())

    def _columns(self, pf) -> list[str] | None:
        if not self.columns:
            return None
        present = set(pf.schema_arrow.names)
        return [c for c in self.columns if c in present]

    def _empty(self, file: int):
        import pyarrow.parquet as pq

        source = self._source(file, whole=False)
        try:
            schema = pq.ParquetFile(source).schema_arrow
        finally:
            _close(source)
        if self.columns:
            import pyarrow as pa

            schema = pa.schema([schema.field(c) for c in self.columns if c in schema.names])
        return schema.empty_table()

    # ------------------------------------------------------------------ random access
    def read_rows(self, path: str, rows: list[int]):
        """The given rows of one file (by path), in the order asked, reading only the row groups that hold them."""
        import pyarrow as pa

        index = self._index_of(path)
        info = self.files[index]
        past_end = {r: f"{self.ref.ref} file {path} has {info.rows} rows; row {r} does not exist." for r in rows
                    if not 0 <= r < info.rows}
        if past_end:  # said before anything is read: the caller reads the rows that exist in one call
            raise MissingData(next(iter(past_end.values())) if len(past_end) == 1 else
                              f"{self.ref.ref} file {path} has {info.rows} rows; rows {sorted(past_end)} do not exist.", past_end)
        if not info.path.endswith(".parquet"):
            table = _read_local_table(_local_path(self.ref, info.path))
            table = table.select(self.columns) if self.columns else table
            return table.take(pa.array(rows, pa.int64()))
        bounds, start = [], 0
        for n in info.row_groups or (info.rows,):
            bounds.append((start, start + n))
            start += n
        pieces, order = [], []
        by_group: dict[int, list[int]] = {}
        for r in rows:
            g = next(i for i, (lo, hi) in enumerate(bounds) if lo <= r < hi)
            by_group.setdefault(g, []).append(r)
        for g, wanted in by_group.items():
            pieces.append(self.row_group(index, g).take(pa.array([r - bounds[g][0] for r in wanted], pa.int64())))
            order += wanted
        table = pa.concat_tables(pieces) if pieces else self._empty(index)
        position = {r: i for i, r in enumerate(order)}
        return table.take(pa.array([position[r] for r in rows], pa.int64()))

    def row_group(self, file: int, group: int):
        """One row group of a file (this reader's columns), the last few kept: consecutive batches of a shard ask for
        the same ones."""
        key = (file, group)
        if key not in self._groups:
            if len(self._groups) >= 4:
                self._groups.pop(next(iter(self._groups)))
            self._groups[key] = self._read_group(file, group, self._columns)
        return self._groups[key]

    def _index_of(self, path: str) -> int:
        if path in self._missing:
            raise MissingData(self._missing[path])
        if path not in self._by_path and self.describe_missing:
            try:
                self.files.append(describe_file(self.ref, path)[0])
            except MissingData as e:
                self._missing[path] = str(e)
                raise
            self._by_path[path] = len(self.files) - 1
        if path not in self._by_path:
            raise MissingData(f"{self.ref.ref} has no data file {path!r} (at {self.ref.sha[:12]}).")
        return self._by_path[path]


def _close(source) -> None:
    """Close a file handle from `_source` (a local path needs nothing)."""
    if source is not None and hasattr(source, "close"):
        source.close()


def group_ranges(ref: DatasetRef, files: list[DataFile], file_column: str, row_column: str):
    """The positions each row group of an aligned input points at (see sharding.GroupRange), from footers only."""
    from hf_pipeline.io.sharding import GroupRange

    ranges = []
    for i, f in enumerate(files):
        meta, _ = file_metadata(ref, f.path)
        names = meta.schema.to_arrow_schema().names
        if file_column not in names or row_column not in names:
            raise PipelineError(
                f"{ref.ref} lacks the position columns '{file_column}', '{row_column}' that point its rows at the "
                f"documents (the match stage writes them; it has: {', '.join(names)})."
            )
        fc, rc = names.index(file_column), names.index(row_column)
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            if group.num_rows == 0:
                continue
            fs, rs = group.column(fc).statistics, group.column(rc).statistics
            if fs is None or rs is None or not fs.has_min_max or not rs.has_min_max:
                # no statistics: the group may point anywhere
                ranges.append(GroupRange(i, g, "", "\U0010ffff", 0, 2**62))
                continue
            ranges.append(GroupRange(i, g, fs.min, fs.max, int(rs.min), int(rs.max)))
    return ranges


class AlignedReader:
    """The rows of an aligned input (pairs) that point at given main-input positions, reading only this shard's
    row groups that may hold them (a few kept for the next batch)."""

    def __init__(self, ref: DatasetRef, files: list[DataFile], groups, file_column: str, row_column: str,
                 columns: list[str] | None = None):
        self.reader = FileReader(ref, files, columns=None if columns is None else list(dict.fromkeys([*columns, file_column, row_column])))
        self.groups, self.file_column, self.row_column = groups, file_column, row_column

    def rows_for(self, doc_files: list[str], doc_rows: list[int]):
        """Rows pointing at any of the (file, row) positions, in the aligned input's order."""
        import pyarrow as pa
        import pyarrow.compute as pc

        wanted: dict[str, set[int]] = {}
        for f, r in zip(doc_files, doc_rows):
            wanted.setdefault(f, set()).add(int(r))
        bounds = {f: (min(rows), max(rows)) for f, rows in wanted.items()}
        pieces = []
        for g in self.groups:
            hit = any(g.first_file <= f <= g.last_file and (g.first_file != g.last_file or not (g.max_row < lo or g.min_row > hi))
                      for f, (lo, hi) in bounds.items())
            if not hit:
                continue
            table = self.reader.row_group(g.file, g.group)
            mask = None
            for f, rows in wanted.items():
                m = pc.and_(pc.equal(table[self.file_column], f), pc.is_in(table[self.row_column], pa.array(sorted(rows), pa.int64())))
                mask = m if mask is None else pc.or_(mask, m)
            pieces.append(table.filter(mask))
        if not pieces:
            return self.reader._empty(0) if self.reader.files else None
        return pa.concat_tables(pieces)
