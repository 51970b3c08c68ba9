"""Shared fixtures: every test talks to a local Hub server, never to huggingface.co.

``huggingface_hub`` and ``datasets`` read ``HF_ENDPOINT`` (and their cache folders) when they are imported, so
the port is picked and the environment is set here, at the top of conftest, before any test module can import
them. The server itself is started lazily, by the first test that asks for ``local_hub``.
"""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

from hf_pipeline.hub.accounts import new_token  # stdlib-only modules: safe to import before the env is set
from hf_pipeline.hub.local import free_port

_TMP = Path(tempfile.mkdtemp(prefix="hf_pipeline_tests_"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)
HUB_PORT = free_port()
os.environ.update(
    HF_ENDPOINT=f"http://127.0.0.1:{HUB_PORT}",
    HF_HUB_DISABLE_XET="1",  # the local hub speaks the LFS protocol, not Xet
    HF_TOKEN=new_token(),  # the session hub's default account (`local`) is started with it: writes need it
    HF_HOME=str(_TMP / "hf_home"),
    HF_DATASETS_CACHE=str(_TMP / "datasets_cache"),
    HF_PIPELINE_CACHE=str(_TMP / "hf_pipeline_cache"),  # runner work dirs, never the user's cache
    HF_HUB_DISABLE_TELEMETRY="1",
    HF_HUB_DISABLE_PROGRESS_BARS="1",
    HF_DATASETS_DISABLE_PROGRESS_BARS="1",
    NO_PROXY=",".join(filter(None, ["127.0.0.1", "localhost", os.environ.get("NO_PROXY")])),
    no_proxy=",".join(filter(None, ["127.0.0.1", "localhost", os.environ.get("no_proxy")])),
)
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.pop(_var, None)

import pytest  # noqa: E402


HUB_ROOT = _TMP / "hub"


@pytest.fixture(scope="session")
def local_hub():
    """URL of a local Hub server (a detached subprocess) serving a fresh root for this test session."""
    from hf_pipeline.hub import local

    root = HUB_ROOT
    url = local.start(root, port=HUB_PORT, access_log=_TMP / "hub-access.log",  # tests count downloads from it
                      token=os.environ["HF_TOKEN"])
    assert url == os.environ["HF_ENDPOINT"]
    yield url
    local.stop(root)


@pytest.fixture(scope="session")
def local_hub_root(local_hub) -> Path:
    """The root folder of the session's local Hub (for ``local.add_user``)."""
    return HUB_ROOT
