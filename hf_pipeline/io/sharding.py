"""Shards as sets of files: which rows of which input files each worker reads. Pure logic, no I/O.

At plan time the runner lists the input's data files at the pinned commit with their row counts (parquet
footers; no data is downloaded). A shard is then a contiguous run of whole files, balanced by rows, so a worker
downloads only its own files and each file is read by exactly one worker. When there are fewer files than
shards, the files are cut at row-group boundaries instead (a worker then reads only its row groups' byte ranges),
and only when even the row groups are too few, at arbitrary rows. `max_rows` keeps a prefix of the input.

Rows are addressed by (file, row within the file): that is the position a pair carries back to its document
(`doc_file`, `doc_row`), and the order in which every stage reads and writes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DataFile:
    """One data file of an input at its pinned revision."""

    path: str  # path in the repo (Hub) or relative to the local input folder
    rows: int
    row_groups: tuple[int, ...] = ()  # rows per row group (parquet); () when the format has none
    part: int = 0  # which of the stage's input parts (sources) the file belongs to
    size: int = 0  # bytes


@dataclass(frozen=True)
class FileSlice:
    file: int  # index into the plan's file list
    start: int  # first row (within the file)
    stop: int  # one past the last row

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class ShardSpec:
    index: int
    slices: tuple[FileSlice, ...] = ()

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.slices)


@dataclass(frozen=True)
class Chunk:
    """A checkpoint unit: rows of one shard that are mapped, and written to disk, together. A chunk never spans
    two input parts, so every row of a chunk has the same source (and schema)."""

    index: int
    slices: tuple[FileSlice, ...] = field(default=())

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.slices)


def take_prefix(files: list[DataFile], max_rows: int | None) -> list[FileSlice]:
    """Every row of every file as slices, cut after `max_rows` rows."""
    slices, left = [], max_rows
    for i, f in enumerate(files):
        rows = f.rows if left is None else min(f.rows, left)
        if rows > 0:
            slices.append(FileSlice(i, 0, rows))
        if left is not None:
            left -= rows
            if left <= 0:
                break
    return slices


def _row_group_units(files: list[DataFile], slices: list[FileSlice]) -> list[FileSlice]:
    """The slices cut at row-group boundaries (a file without row groups is one unit)."""
    groups = []
    for s in slices:
        start = 0
        for n in files[s.file].row_groups or (files[s.file].rows,):
            lo, hi = max(start, s.start), min(start + n, s.stop)
            if lo < hi:
                groups.append(FileSlice(s.file, lo, hi))
            start += n
    return groups


def _assign_units(units: list[FileSlice], num_shards: int) -> list[list[FileSlice]]:
    """Contiguous runs of units, cut where the cumulative row count crosses k/num_shards of the total: balanced by
    rows while each unit (a file, a row group) belongs to exactly one shard."""
    total = sum(u.rows for u in units)
    shards: list[list[FileSlice]] = [[] for _ in range(num_shards)]
    done = 0
    for u in units:
        # the shard whose row range holds this unit's middle row
        k = min(num_shards - 1, (2 * done + u.rows) * num_shards // (2 * total)) if total else 0
        shards[k].append(u)
        done += u.rows
    return shards


def _cut_rows(slices: list[FileSlice], num_shards: int) -> list[list[FileSlice]]:
    """The rows of the slices, taken in order, cut arithmetically: O(shards + files) objects whatever the row count
    (when even the row groups are fewer than the shards). Row r goes where `_assign_units` would put it as a unit of
    one row, to shard floor((2r + 1) * n / 2T), so shard k starts at the first row r with (2r + 1) * n >= 2kT."""
    total = sum(s.rows for s in slices)

    def first_row(k: int) -> int:
        return min(total, max(0, -((num_shards - 2 * k * total) // (2 * num_shards))))  # ceil((2kT - n) / 2n)

    shards: list[list[FileSlice]] = [[] for _ in range(num_shards)]
    pending = iter(slices)
    current = next(pending, None)
    offset = current.start if current else 0  # the next row of `current` not yet given to a shard
    for k in range(num_shards):
        want = first_row(k + 1) - first_row(k)
        while want > 0 and current is not None:
            take = min(want, current.stop - offset)
            shards[k].append(FileSlice(current.file, offset, offset + take))
            offset += take
            want -= take
            if offset == current.stop:
                current = next(pending, None)
                offset = current.start if current else 0
    return shards


def plan_shards(files: list[DataFile], num_shards: int, max_rows: int | None = None) -> list[ShardSpec]:
    """`num_shards` contiguous shards over the files' rows (empty shards when there are fewer rows than shards):
    whole files when there are at least as many files as shards, else row groups, else rows cut arithmetically."""
    slices = take_prefix(files, max_rows)
    if len(slices) >= num_shards:
        shards = _assign_units(slices, num_shards)
    else:
        groups = _row_group_units(files, slices)
        shards = _assign_units(groups, num_shards) if len(groups) >= num_shards else _cut_rows(slices, num_shards)
    return [ShardSpec(i, tuple(_merge(s))) for i, s in enumerate(shards)]


def _merge(slices: list[FileSlice]) -> list[FileSlice]:
    """Adjacent slices of one file become one."""
    out: list[FileSlice] = []
    for s in slices:
        if out and out[-1].file == s.file and out[-1].stop == s.start:
            out[-1] = FileSlice(s.file, out[-1].start, s.stop)
        else:
            out.append(s)
    return out


def plan_chunks(shard: ShardSpec, files: list[DataFile], chunk_rows: int) -> list[Chunk]:
    """The shard's rows in checkpoint chunks of at most `chunk_rows` rows, cut where the input part changes.
    Deterministic from the plan, so a resumed shard finds its finished chunks by index."""
    chunks: list[Chunk] = []
    current: list[FileSlice] = []
    size, part = 0, None
    for s in shard.slices:
        start = s.start
        while start < s.stop:
            if current and (size == chunk_rows or files[s.file].part != part):
                chunks.append(Chunk(len(chunks), tuple(current)))
                current, size = [], 0
            part = files[s.file].part
            take = min(chunk_rows - size, s.stop - start)
            current.append(FileSlice(s.file, start, start + take))
            size += take
            start += take
    if current or not chunks:
        chunks.append(Chunk(len(chunks), tuple(current)))
    return chunks


@dataclass(frozen=True)
class GroupRange:
    """What one row group of an aligned input (pairs) points at: main-input positions from (first_file, first_row)
    to (last_file, last_row), from the footer's min/max statistics (conservative when they span several files)."""

    file: int  # the aligned input's file
    group: int  # its row group
    first_file: str
    last_file: str
    min_row: int
    max_row: int


def align_groups(shards: list[ShardSpec], files: list[DataFile], groups: list[GroupRange]) -> list[list[GroupRange]]:
    """For each shard of the main input, the aligned input's row groups that may hold rows pointing into it, in the
    groups' order.

    A group spanning several main files is given to every shard holding a row of a file in that span (files sort
    in read order: their paths are sorted when listed); within one file, by the overlap of row ranges. The shards'
    slices are sorted once by (path, start), so each group costs a binary search plus its hits: O((shards + groups)
    log shards), where testing every group against every shard was O(shards x groups) at plan time."""
    from bisect import bisect_left, bisect_right

    entries = sorted((files[s.file].path, s.start, s.stop, shard.index) for shard in shards for s in shard.slices)
    paths = [e[0] for e in entries]
    ends = [(e[0], e[2]) for e in entries]  # a file's slices do not overlap: sorted by start, they are by stop too
    out: list[list[GroupRange]] = [[] for _ in shards]
    for g in groups:
        if g.first_file == g.last_file:  # the slices of that file ending after min_row and starting by max_row
            lo, hi = bisect_right(ends, (g.first_file, g.min_row)), bisect_right(paths, g.first_file)
        else:
            lo, hi = bisect_left(paths, g.first_file), bisect_right(paths, g.last_file)
        hit: dict[int, None] = {}  # shards in read order, each once
        for i in range(lo, hi):
            path, start, stop, shard = entries[i]
            if g.first_file == g.last_file and start > g.max_row:
                break  # the file's later slices start further on
            hit[shard] = None
        for shard in hit:
            out[shard].append(g)
    return out
