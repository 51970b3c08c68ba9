"""A local, Hugging Face Hub-compatible endpoint for offline runs and tests.

Point the real clients at it with ``HF_ENDPOINT=http://127.0.0.1:PORT``, ``HF_HUB_DISABLE_XET=1`` and
``HF_TOKEN`` set to a token of this Hub (``hub env`` prints all three). ``hf_pipeline.hub.local`` starts it as a
detached ``python -m hf_pipeline.hub.server --root ROOT --port PORT`` (``__main__``).

Its layers, each in the module its name says, each building on the ones before it:

- ``plumbing``: git plumbing (every call reads refs and objects from disk) and the Hub's date format;
- ``discussions``: discussions and pull requests: records, events, timeline, status changes, conflicts, merges;
- ``store``: ``Store``, the git store: repo layout, LFS objects, revision resolution, commits, branches and tags,
  every write under a per-repo lock;
- ``auth``: accounts from ``ROOT/tokens.json`` and who may read or write what (``Access``);
- ``reads``: the read routes (service and identity, repo info, refs, trees, paths-info, history, files with
  ``Range``, listings), over olah's mirror backend where it serves the Hub's answer;
- ``writes``: the write routes (repos, preupload, the LFS API, commits, branches, tags);
- ``discussion_routes``: the routes of discussions and pull requests, reads and writes;
- ``app``: ``create_app`` (request guard, our routes, then olah's), the access log and ``main``.

Beside the package, ``hf_pipeline.hub.guard`` checks every request before a route sees it (Host, Origin, body caps)
and ``hf_pipeline.hub.accounts`` keeps the tokens.
"""

from hf_pipeline.hub.server.app import create_app, main

__all__ = ["create_app", "main"]
