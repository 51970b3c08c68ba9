"""Peak memory of instantiate, assemble and analyze does not grow with the number of documents (CI-sized).

`scripts/bench_memory.py` runs each stage over 20,000 and 200,000 documents; this is the same check, the larger
corpus again 10x the smaller, over 6,000 and 60,000 (files of 2,000 rows with row groups of 1,000, so the larger
corpus has more files, not larger ones, and the 1,000-row chunks read parts of files by range, as at full size),
each run in its own process under `/usr/bin/time -v`, one shard, one judged pair pointing at the first document.
The smaller corpus is past the allocators' warm-up: over the first few thousand documents the peak climbs by
30-55 MB whatever the corpus size (memory pools keeping freed pages), then stays flat (analyze, measured: 2,000
vs 20,000 documents +30 to +54 MB; 6,000 vs 20,000 +10 MB; 20,000 vs 200,000 +11 MB).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_memory.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_memory", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not Path("/usr/bin/time").exists(), reason="needs GNU time (/usr/bin/time -v) for the peak RSS")
def test_peak_memory_does_not_grow_with_documents(local_hub, tmp_path):
    bench = load_bench()
    small, large = 6_000, 60_000
    results = bench.compare([small, large], tmp_path, rows_per_file=2_000, row_group=1_000)
    for stage, runs in results.items():
        peak = {r["n"]: r["peak_rss_mb"] for r in runs}
        assert peak[large] - peak[small] <= 50, f"{stage}: peak RSS {peak[small]:.0f} MB at {small} documents, {peak[large]:.0f} MB at {large}"
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_corpus_files_and_row_groups(tmp_path):
    import pyarrow.parquet as pq

    bench = load_bench()
    paths = bench.write_corpus(2_500, tmp_path, rows_per_file=1_000, row_group=400)
    assert paths == [f"data/train-{k:05d}-of-00003.parquet" for k in range(3)]
    metas = [pq.read_metadata(tmp_path / p) for p in paths]
    assert [m.num_rows for m in metas] == [1000, 1000, 500]
    assert [metas[0].row_group(g).num_rows for g in range(metas[0].num_row_groups)] == [400, 400, 200]
    table = pq.read_table(tmp_path / paths[0])
    ids = table["doc_id"].to_pylist()
    assert len(set(ids)) == 1000 and ids[0].endswith("-0")
    lengths = [len(t) for t in table["text"].to_pylist()]
    assert 1500 < sum(lengths) / len(lengths) < 4000  # ~2 KB passages
