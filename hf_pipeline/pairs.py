"""Instantiate's (document, template) pairs, as the stages from instantiate on share them.

`INSTANTIATE_COLUMNS`: a pair's row as instantiate writes it (judge carries it on). `read_documents`: a batch's
documents read back by their position in the `documents` input (instantiate; instantiator_silver for its examples).
`user_message`: a pair's user message, in the student's contract or the teacher's prompt, laid out by
`PromptLayout`; `MAX_DOCUMENT_CHARS`: where both stages cut a document in it by default.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from hf_pipeline.errors import PipelineError
from hf_pipeline.package_data import package_file
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
    `doc_id_column` and `text_column`."""
    id_column, text_column = ctx.config.doc_id_column, ctx.config.text_column
    try:
        tables = [(rows, ctx.read_rows(ref, path, rows))]
        failed: dict[int, str] = {}
    except PipelineError:  # a row past the file's end, or no such file: read row by row to say which
        tables, failed = [], {}
        for r in rows:
            try:
                tables.append(([r], ctx.read_rows(ref, path, [r])))
            except PipelineError as e:
                failed[r] = str(e)
    found = {}
    for asked, table in tables:
        missing = [c for c in (id_column, text_column) if c not in table.column_names]
        if missing:
            raise PipelineError(f"documents {ref} lack column '{missing[0]}' (they have: {', '.join(table.column_names)}); "
                                "set config keys 'doc_id_column' and 'text_column'.")
        found.update(zip(asked, zip(table[id_column].to_pylist(), table[text_column].to_pylist())))
    return found, failed


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
