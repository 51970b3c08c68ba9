"""Instantiate's (document, template) pairs, as the stages from instantiate on share them.

`INSTANTIATE_COLUMNS`: a pair's row as instantiate writes it (judge carries it on). `read_documents`: a batch's
documents read back by their position in the `documents` input (instantiate; instantiator_silver for its examples).
`check_documents_lineage`: at plan time, the `documents` given are those the pairs' positions point into, as the
pairs' card lineage records them (`aligned_lineage_check`: the same for assemble and analyze, which map the
documents with the pairs aligned to them). `user_message`: a pair's user message, in the student's contract or the teacher's
prompt, laid out by `PromptLayout`; `MAX_DOCUMENT_CHARS`: where both stages cut a document in it by default.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Literal

from hf_pipeline.errors import PipelineError
from hf_pipeline.io.datafiles import MissingData
from hf_pipeline.io.hub import DatasetRef, read_card_metadata
from hf_pipeline.io.package_data import package_file
from hf_pipeline.stage import StageContext

TEACHER_PROMPT = package_file("prompts", "instantiate_teacher.txt")
TEACHER_PROMPT_DOCUMENT_FIRST = TEACHER_PROMPT.with_name("instantiate_teacher_document_first.txt")
PromptLayout = Literal["template_first", "document_first"]
MAX_DOCUMENT_CHARS = 20000  # longer documents are cut to this many characters in the prompt

INSTANTIATE_COLUMNS = {
    "doc_id": "string",
    "template_id": "string",
    "template": "string",  # the template's text (from match)
    "doc_file": "string",  # the document's position in the documents input (from match)
    "doc_row": "int64",
    "chunk_index": "int32",
    "score": "float32",
    "instruction": "string",
    "answer": "string",  # excerpts expanded to the document's exact text
    "excerpt_ratio": "float32",  # share of the answer's non-whitespace characters copied from the document
    "excerpt_spans": "list<list<int64>>",  # [doc_start, doc_end) of each excerpt, in answer order
    "raw_answer": "string",  # what the model wrote, excerpt tags and all (or its raw text when unparseable)
    "generated_tokens": "int32",
    "status": "string",
    "status_detail": "string",
}


def teacher_prompt(layout: PromptLayout = "template_first") -> Path:
    return TEACHER_PROMPT_DOCUMENT_FIRST if layout == "document_first" else TEACHER_PROMPT


def user_message(template: str, document: str, mode: str, layout: PromptLayout = "template_first") -> str:
    """The user message for one pair. student: JSON {"instruction_template", "document"} (the published contract),
    or with `document_first` {"document", "instruction_template"}; teacher: the teacher prompt for the layout."""
    if layout not in ("template_first", "document_first"):
        raise PipelineError(f"prompt_layout must be template_first or document_first, got {layout!r}.")
    if mode == "student":
        fields = {"instruction_template": template, "document": document}
        if layout == "document_first":
            fields = {"document": document, "instruction_template": template}
        return json.dumps(fields, ensure_ascii=False)
    return teacher_prompt(layout).read_text().format(template=template, document=document)


def _read_positions(ctx: StageContext, ref: str, path: str, rows: list[int]) -> tuple[dict[int, tuple], dict[int, str]]:
    """({row: (doc_id, text)}, {row: why it cannot be read}) for rows of one data file of `ref`, from the config's
    `doc_id_column` and `text_column`. Only data that is not there (no such file, a row past its end: `MissingData`)
    becomes a reason; any other error (the Hub busy past the client's retries) is raised and fails the task."""
    id_column, text_column = ctx.config.doc_id_column, ctx.config.text_column
    failed: dict[int, str] = {}
    try:
        table = ctx.read_rows(ref, path, rows)
    except MissingData as e:
        if e.rows is None:  # no such file: every row (the reader asks the Hub once per file, whatever the rows)
            return {}, {r: str(e) for r in rows}
        failed = {r: e.rows[r] for r in rows if r in e.rows}
        rows = [r for r in rows if r not in failed]  # the rows that exist, in one more read
        table = ctx.read_rows(ref, path, rows) if rows else None
    if table is None:
        return {}, failed
    missing = [c for c in (id_column, text_column) if c not in table.column_names]
    if missing:
        raise PipelineError(f"documents {ref} lack column '{missing[0]}' (they have: {', '.join(table.column_names)}); "
                            "set config keys 'doc_id_column' and 'text_column'.")
    return dict(zip(rows, zip(table[id_column].to_pylist(), table[text_column].to_pylist()))), failed


def read_documents(batch: dict[str, list], ctx: StageContext) -> tuple[list[str | None], dict[int, tuple[str, str]]]:
    """The text of each row's document, read by its position in `documents` (grouped by file: only the files and
    row groups the batch points at), checked against the pair's doc_id. Returns (texts, {row: (status, detail)}) for
    rows whose document cannot be used."""
    ref = ctx.config.documents
    texts: list[str | None] = [None] * len(batch["doc_id"])
    problems: dict[int, tuple[str, str]] = {}
    by_file: dict[str, list[int]] = {}
    for i, (path, row) in enumerate(zip(batch["doc_file"], batch["doc_row"])):
        if path is None or row is None:
            problems[i] = ("unknown_document", "the pair carries no document position (doc_file, doc_row)")
        else:
            by_file.setdefault(path, []).append(i)
    for path, members in by_file.items():
        found, failed = _read_positions(ctx, ref, path, sorted({int(batch["doc_row"][i]) for i in members}))
        for i in members:
            row, doc_id = int(batch["doc_row"][i]), batch["doc_id"][i]
            if row not in found:
                problems[i] = ("unknown_document", failed.get(row) or f"{ref} has no row {row} in {path}")
            elif str(found[row][0]) != str(doc_id):
                problems[i] = ("document_mismatch", f"row {row} of {path} in {ref} is document {found[row][0]!r}, not "
                               f"{doc_id!r}: the documents are not the revision the pairs were matched on")
            elif found[row][1] is None:
                problems[i] = ("unknown_document", f"document {doc_id!r} ({path} row {row}) has no text")
            else:
                texts[i] = found[row][1]
    return texts, problems


LINEAGE_HOPS = 4  # cards followed back from the pairs (judged rows -> instantiated -> pairs: two) before giving up


def _card_lineage(ref: DatasetRef) -> dict[str, Any] | None:
    """The `hf_pipeline:` metadata in the card of a Hub input at its pinned commit; None without a card."""
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return read_card_metadata(ref.repo_id, ref.sha).get("hf_pipeline") or None
    except EntryNotFoundError:
        return None


def documents_in_lineage(pinned: DatasetRef) -> dict[str, Any] | None:
    """The documents (an input entry of a card: ref, repo_id, sha, path) that the positions in `pinned`'s rows point
    into, as the lineage in the cards records them: the `documents` a stage read by position (instantiate's config),
    or the input `match` mapped over; each other card is followed back through its mapped input (judged rows to
    instantiated rows to pairs). None when the lineage does not say: a local input, a card without lineage (data
    pushed as it is), or a chain longer than LINEAGE_HOPS."""
    ref = pinned
    for _ in range(LINEAGE_HOPS):
        meta = _card_lineage(ref) if ref.repo_id else None
        if meta is None:
            return None
        inputs = {i.get("ref"): i for i in meta.get("inputs") or []}
        documents = (meta.get("config") or {}).get("documents")
        if isinstance(documents, str) and documents in inputs:
            return inputs[documents]
        mapped = inputs.get((meta.get("run") or {}).get("input"))
        if meta.get("stage") == "match" or mapped is None:
            return mapped
        ref = DatasetRef(mapped["ref"], mapped.get("repo_id"), mapped.get("revision"), mapped["sha"], mapped.get("path"))
    return None


def check_documents_lineage(stage: str, documents_ref: str, documents: DatasetRef, rows: DatasetRef) -> None:
    """At plan time, for a stage that reads `documents` (as written: `documents_ref`) by the positions the rows of
    `rows` carry (instantiate reading its pairs' documents; assemble and analyze mapping the documents with the
    pairs aligned to them): those are the documents the positions point into (same repo, same commit), when the
    rows' card lineage says which; else the run would read other documents at those positions (every row
    `document_mismatch`, or worse, the right ids at a revision whose texts changed). Skipped for local inputs and
    inputs without lineage (nothing recorded to check)."""
    if documents.repo_id is None:
        return
    recorded = documents_in_lineage(rows)
    if recorded is None or not recorded.get("repo_id"):
        return
    if (recorded["repo_id"], recorded.get("sha")) != (documents.repo_id, documents.sha):
        matched = f"{recorded['repo_id']}@{recorded.get('sha')}"
        raise PipelineError(
            f"{stage} reads documents {documents.pinned} ('{documents_ref}'), but the positions in {rows.ref} point into "
            f"{matched} (the documents match read, says the lineage in their card): set documents to {matched}."
        )


def aligned_lineage_check(stage: str) -> Callable[[Any, Any], Any]:
    """`Inputs.resolve_config` for a stage that maps the documents with rows aligned to them by position (assemble,
    analyze): every aligned input's positions point into the documents mapped (`check_documents_lineage`)."""

    def resolve(config: Any, plan: Any) -> Any:
        for spec in plan.aligned:
            check_documents_lineage(stage, plan.parts[0].ref, plan.part_refs[0], plan.pinned(spec.ref))
        return config

    return resolve
