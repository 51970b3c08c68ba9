"""Column dtype specs ("string", "int64", "list<float32>", "chat") -> `datasets.Features`, so every chunk of a
stage has the same schema even when a chunk's column happens to be all null.

"chat" is a conversation in the Hub's usual `messages` layout, a list of {"role", "content"} strings, which
chat templates, TRL and our training stages read as is."""

from __future__ import annotations

from typing import Mapping


def feature_from_spec(spec: str):
    import datasets

    spec = spec.strip()
    if spec == "chat":
        return datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
    if spec.startswith("list<") and spec.endswith(">"):
        return datasets.List(feature_from_spec(spec[5:-1]))
    return datasets.Value(spec)


def features_from_spec(columns: Mapping[str, str]):
    import datasets

    return datasets.Features({name: feature_from_spec(spec) for name, spec in columns.items()})
