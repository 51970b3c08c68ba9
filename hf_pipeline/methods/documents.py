"""A user's own corpus: which of the documents' columns hold a document's id and its text.

Every stage that reads documents (`match`, `match_labels`, `assemble`, `analyze` map over them; `instantiate`,
`instantiator_silver` read them by position) takes the config keys `doc_id_column` and `text_column` (defaults `doc_id`, `text`). The values
are the user's own: a pair's `doc_id` is the value of the corpus's id column, whatever that column is called (the
published column keeps the name `doc_id`). Ids are compared and published as strings.

The columns are checked at plan time, before any model loads: on the mapped input by the stage's `check_input`,
on a documents side input by its `resolve_config` (one data file's footer: the schema of a Hub input, never its
data).
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from hf_pipeline.errors import PipelineError

DOC_ID_COLUMN, TEXT_COLUMN = "doc_id", "text"


def doc_id_field() -> Any:
    return field(default=DOC_ID_COLUMN, metadata={"help": "the documents' column holding each document's id (its values become `doc_id`)"})


def text_field() -> Any:
    return field(default=TEXT_COLUMN, metadata={"help": "the documents' column holding each document's text"})


def model_revision_field() -> Any:
    """The revision of an embedder named by a config's `model` (pinned to its commit when a run is planned)."""
    return field(default=None, metadata={"help": "revision of a Hub model (branch, tag or sha)"})


def check_columns(schema, wanted: dict[str, str | None], what: str, stage: str) -> None:
    """`wanted`: {config key: column name (None: not asked)}; a missing column is said naming the key to set."""
    names = list(schema.names) if schema is not None else []
    for key, column in wanted.items():
        if column and column not in names:
            raise PipelineError(
                f"{what} lacks column '{column}' (config key '{key}' of stage {stage}); it has: "
                f"{', '.join(names) or 'no columns'}. Set --set {key}=<one of its columns>."
            )


def document_columns(config: Any) -> dict[str, str]:
    return {"doc_id_column": config.doc_id_column, "text_column": config.text_column}


def check_mapped_documents(stage: str):
    """A `check_input` hook for a stage that maps over the documents: their id and text columns exist."""

    def check_input(part, schema, config) -> None:
        if not config.doc_id_column or not config.text_column:
            raise PipelineError(f"config keys 'doc_id_column' and 'text_column' of stage {stage} must name columns.")
        check_columns(schema, document_columns(config), f"input {part.ref}", stage)

    return check_input


def side_input_schema(pinned, split: str = "train"):
    """The arrow schema of a pinned side input, from one data file only: a Hub input's first data file's parquet
    footer (a range read), or a local input's first file."""
    from hf_pipeline.io import datafiles

    paths = datafiles.data_file_paths(pinned, split)
    return datafiles.describe_file(pinned, paths[0])[1] if paths else None


def check_documents_input(config: Any, plan: Any, stage: str) -> None:
    """For a stage that reads `config.documents` by position: the id and text columns exist in its schema."""
    if not config.doc_id_column or not config.text_column:
        raise PipelineError(f"config keys 'doc_id_column' and 'text_column' of stage {stage} must name columns.")
    schema = side_input_schema(plan.pinned(config.documents))
    check_columns(schema, document_columns(config), f"documents {config.documents}", stage)
