"""Reading schema-constrained JSON answers, and the few rules that keep small models from looping in them.

Schema guidance: give every string field a `maxLength` or a bounded `pattern` (a small model can otherwise repeat itself inside a
string until `max_tokens`), keep `max_tokens` above the longest valid answer, and wrap the schema in
`nullable(...)` when the model may decline (the published instantiator answers `null` when a template does not
fit its document). Constrained decoding makes the text parse; `parse_json_completion` still checks it, because
a row can stop at `max_tokens` or come from a server that ignored the schema.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any, Literal

import jsonschema

if TYPE_CHECKING:  # only an annotation here: base.py imports this module
    from hf_pipeline.llm.base import Completion

log = logging.getLogger(__name__)

JsonStatus = Literal["ok", "null", "unparseable", "length", "schema_mismatch", "error", "prompt_too_long"]


def nullable(schema: dict) -> dict:
    """`schema` or JSON null."""
    return {"anyOf": [schema, {"type": "null"}]}


def parse_json_completion(completion: Completion, schema: dict) -> tuple[Any, JsonStatus, str]:
    """(value, status, detail) for one row; value is None unless status is "ok". The caller keeps the raw text."""
    if completion.finish_reason == "prompt_too_long":  # never sent to the engine (see llm/base.py)
        return None, "prompt_too_long", completion.error or "the prompt does not fit the model's context"
    if completion.finish_reason == "error":
        return None, "error", completion.error or "generation failed"
    if completion.finish_reason == "length":
        return None, "length", f"stopped at max_tokens ({completion.completion_tokens} tokens) before the JSON ended"
    try:
        value = json.loads(completion.text)
    except json.JSONDecodeError as e:
        return None, "unparseable", f"not JSON: {e}"
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(value))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return None, "schema_mismatch", f"{where}: {error.message}"
    if value is None:
        return None, "null", "the model answered null"
    return value, "ok", ""


def unbounded_strings(schema: Any, path: str = "$") -> list[str]:
    """Paths of string fields in a schema that have no maxLength, enum or pattern. A pattern counts as a bound: the
    stages' patterns are bounded repetitions (and xgrammar ignores maxLength beside a pattern anyway)."""
    if isinstance(schema, list):
        return [p for i, s in enumerate(schema) for p in unbounded_strings(s, f"{path}[{i}]")]
    if not isinstance(schema, dict):
        return []
    types = schema.get("type")
    is_string = types == "string" or (isinstance(types, list) and "string" in types)
    found = [path] if is_string and not {"maxLength", "enum", "const", "pattern"} & schema.keys() else []
    for key, sub in schema.items():
        if key == "properties":
            found += [p for name, s in sub.items() for p in unbounded_strings(s, f"{path}.{name}")]
        elif key in ("items", "anyOf", "oneOf", "allOf", "additionalProperties", "$defs"):
            found += unbounded_strings(sub if key != "$defs" else list(sub.values()), f"{path}.{key}")
    return found


_warned: set[tuple[str, ...]] = set()  # the sets of paths already warned about: bounded, unlike the schemas seen


def warn_unbounded_strings(schema: dict) -> None:
    """Log once per set of unbounded paths when string fields lack maxLength (see the module docstring)."""
    paths = tuple(unbounded_strings(schema))
    if paths and paths not in _warned:
        _warned.add(paths)
        log.warning("JSON schema string fields without maxLength (a small model may loop in them): %s", list(paths))
