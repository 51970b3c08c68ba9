"""Query extraction, normalization and dedup keys (hf_pipeline.methods.text.queries)."""

import hashlib
import json
from importlib import resources
from pathlib import Path

import pytest
import yaml

from hf_pipeline.methods.text import queries
from hf_pipeline.methods.text.queries import (
    SourceMapping,
    check_query,
    dedup_key,
    extract_first_user_message,
    first_user_message,
    normalize_whitespace,
    partition_key,
    query_id,
    source_mappings,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


# --- normalize_whitespace ---------------------------------------------------------------------


def test_normalize_collapses_unicode_spaces_inside_a_line():
    text = "What\u00a0is\u2003the\u3000capital \t of  France?"
    assert normalize_whitespace(text) == "What is the capital of France?"


def test_normalize_keeps_lines_and_makes_one_paragraph_break():
    text = "  Fix this code:\r\n\r\n\r\n\ndef f():\r\n    return 1   \n\n\n"
    assert normalize_whitespace(text) == "Fix this code:\n\ndef f():\n    return 1"


def test_normalize_removes_invisible_characters_and_unicode_line_breaks():
    assert normalize_whitespace("\ufeffzero\u200bwidth\u2028next line") == "zerowidth\nnext line"


def test_normalize_of_blank_text_is_empty():
    assert normalize_whitespace(" \n\t\u00a0\n ") == ""


# --- dedup_key ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "variant",
    ["What is AI?", "what is ai", "  WHAT   is A.I. ?", "What is AI?!?", "\uff37hat is \uff21\uff29\uff1f", "What\u200b is AI"],
)
def test_dedup_key_merges_case_punctuation_width_and_spacing(variant):
    assert dedup_key(variant) == dedup_key("What is AI?") == "what is ai"


@pytest.mark.parametrize("other", ["What is ML?", "What is an AI?", "Who is AI?", "What is AI used for?"])
def test_dedup_key_keeps_different_questions_apart(other):
    assert dedup_key(other) != dedup_key("What is AI?")


def test_dedup_key_keeps_numbers_and_symbols_meaningful():
    assert dedup_key("Is 3.5 > 2?") != dedup_key("Is 35 > 2?")
    assert dedup_key("What is 2+2?") != dedup_key("What is 22?")
    assert dedup_key("Send me an e-mail") == dedup_key("send me an email")
    assert dedup_key("Don\u2019t stop") == dedup_key("dont stop")


def test_dedup_key_keeps_diacritics_and_non_latin_scripts():
    assert dedup_key("café") != dedup_key("cafe")
    assert dedup_key("東京は何ですか？") == "東京は何ですか"


# --- partition_key: which rows must meet in one partition of the dedupe ------------------------


def test_partition_key_brings_every_kind_of_duplicate_together():
    stored = [normalize_whitespace(t) for t in ["What is AI?", "What is AI?", "what is  ai", "WHAT is A.I.?!"]]
    # normalized: exact and normalised duplicates share one key, so both checks run in one partition
    assert len({partition_key(q, "normalized") for q in stored}) == 1
    # exact: only exact copies share a key (the normalised variants are different queries here)
    assert partition_key(stored[0], "exact") == partition_key(stored[1], "exact") != partition_key(stored[2], "exact")
    # none: the key only spreads the rows; it is the query's id
    assert partition_key(stored[0], "none") == query_id(stored[0])
    with pytest.raises(ValueError, match="unknown dedupe mode"):
        partition_key("x", "fuzzy")


# --- query_id ----------------------------------------------------------------------------------


def test_query_id_is_sha256_prefix_of_the_normalized_text():
    expected = hashlib.sha256("What is AI?".encode()).hexdigest()[:16]
    assert query_id("What is AI?") == expected
    assert query_id("  What\u00a0is AI?\n") == expected  # same normalized text, same id
    assert query_id("what is ai?") != expected  # the id names the text as stored, not its dedup key


# --- check_query -------------------------------------------------------------------------------


def test_check_query_reasons():
    assert check_query(None, max_chars=100) == queries.NOT_TEXT
    assert check_query(["What is AI?"], max_chars=100) == queries.NOT_TEXT
    assert check_query("   ", max_chars=100) == queries.EMPTY
    assert check_query("x" * 101, max_chars=100) == queries.TOO_LONG
    assert check_query("x" * 100, max_chars=100) is None
    assert check_query("What is AI?", max_chars=100) is None


# --- SourceMapping and extraction on rows shaped like the real datasets -----------------------


WILDCHAT = SourceMapping(name="wildchat", dataset="allenai/WildChat-1M", conversation_column="conversation", where={"language": "English"})


def wildchat_row(language="English", conversation=None):
    return {
        "conversation_hash": "c0ffee",
        "model": "gpt-4-0314",
        "conversation": conversation
        if conversation is not None
        else [
            {"content": "Write a haiku about rain.", "role": "user", "language": "English", "toxic": False, "redacted": False},
            {"content": "Soft rain on the roof...", "role": "assistant", "language": "English", "toxic": False, "redacted": False},
            {"content": "Now one about snow.", "role": "user", "language": "English", "toxic": False, "redacted": False},
        ],
        "turn": 2,
        "language": language,
        "toxic": False,
    }


def test_conversation_mapping_takes_the_first_user_turn():
    assert first_user_message(wildchat_row(), WILDCHAT) == "Write a haiku about rain."
    assert extract_first_user_message(wildchat_row(), WILDCHAT) == ("Write a haiku about rain.", None)


def test_where_filter_rejects_other_languages():
    assert extract_first_user_message(wildchat_row(language="Chinese"), WILDCHAT) == (None, queries.NOT_SELECTED)


def test_where_filter_accepts_any_of_a_list():
    mapping = SourceMapping(name="x", dataset="x", conversation_column="conversation", where={"language": ["English", "German"]})
    assert first_user_message(wildchat_row(language="German"), mapping) == "Write a haiku about rain."


def test_conversation_reasons():
    assistant_only = [{"content": "Hello! How can I help?", "role": "assistant"}]
    multimodal = [{"content": [{"type": "image_url", "image_url": "..."}], "role": "user"}]
    assert extract_first_user_message(wildchat_row(conversation=assistant_only), WILDCHAT).drop_reason == queries.NO_USER_TURN
    assert extract_first_user_message(wildchat_row(conversation=multimodal), WILDCHAT).drop_reason == queries.NOT_TEXT
    assert extract_first_user_message(wildchat_row(conversation="[...]"), WILDCHAT).drop_reason == queries.MALFORMED_CONVERSATION
    assert extract_first_user_message(wildchat_row(conversation=["hi"]), WILDCHAT).drop_reason == queries.MALFORMED_CONVERSATION
    assert extract_first_user_message({"language": "English"}, WILDCHAT).drop_reason == queries.MISSING
    no_content = [{"role": "user", "content": None}]
    assert extract_first_user_message(wildchat_row(conversation=no_content), WILDCHAT).drop_reason == queries.MISSING


def test_sharegpt_style_turns_with_from_and_value():
    mapping = SourceMapping(
        name="sharegpt", dataset="x", conversation_column="conversations", role_key="from", content_key="value", user_role="human"
    )
    row = {"id": "2wtLdZm", "conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Are you familiar with SAS?"}, {"from": "gpt", "value": "Yes."}]}
    assert first_user_message(row, mapping) == "Are you familiar with SAS?"


def test_no_robots_chat_row_skips_the_system_prompt():
    mapping = SourceMapping(name="no_robots", dataset="HuggingFaceH4/no_robots", conversation_column="messages")
    row = {
        "prompt": "Bunny is a chatbot that stutters.",
        "prompt_id": "2dc7ea89",
        "messages": [
            {"content": "Bunny is a chatbot that stutters.", "role": "system"},
            {"content": "When was the Library of Alexandria burned down?", "role": "user"},
            {"content": "Umm, I-I think that was in 48 BC.", "role": "assistant"},
        ],
        "category": "Chat",
    }
    assert first_user_message(row, mapping) == "When was the Library of Alexandria burned down?"


def test_oasst1_flat_message_table_keeps_english_root_prompts_only():
    mapping = SourceMapping(name="oasst1", dataset="OpenAssistant/oasst1", column="text", where={"parent_id": None, "role": "prompter", "lang": "en"})
    root = {"message_id": "6ab24d72", "parent_id": None, "text": "Can you write a short introduction about monopsony?", "role": "prompter", "lang": "en"}
    reply = {"message_id": "c8e83833", "parent_id": "6ab24d72", "text": "Monopsony is a market structure...", "role": "assistant", "lang": "en"}
    follow_up = {"message_id": "9f2b1a11", "parent_id": "c8e83833", "text": "Now explain it to a child.", "role": "prompter", "lang": "en"}
    spanish = {**root, "message_id": "0d1e", "text": "¿Qué es un monopsonio?", "lang": "es"}
    assert first_user_message(root, mapping) == "Can you write a short introduction about monopsony?"
    for row in (reply, follow_up, spanish):
        assert extract_first_user_message(row, mapping) == (None, queries.NOT_SELECTED)


def test_plain_text_column():
    mapping = SourceMapping(name="dolly", dataset="databricks/databricks-dolly-15k", column="instruction")
    row = {"instruction": "When did Virgin Australia start operating?", "context": "Virgin Australia...", "response": "On 31 August 2000.", "category": "closed_qa"}
    assert first_user_message(row, mapping) == "When did Virgin Australia start operating?"
    assert extract_first_user_message({"instruction": 42}, mapping).drop_reason == queries.NOT_TEXT
    assert extract_first_user_message({"context": "..."}, mapping).drop_reason == queries.MISSING


def test_source_mapping_from_dict():
    mapping = SourceMapping.from_dict({"name": "oasst1", "dataset": "OpenAssistant/oasst1", "splits": "train", "column": "text", "where": {"parent_id": None}})
    assert mapping.splits == ("train",)
    assert mapping.where == {"parent_id": None}
    with pytest.raises(ValueError, match="unknown keys"):
        SourceMapping.from_dict({"name": "x", "dataset": "x", "column": "text", "colum": "typo"})
    with pytest.raises(ValueError, match="exactly one"):
        SourceMapping.from_dict({"name": "x", "dataset": "x", "column": "text", "conversation_column": "messages"})
    with pytest.raises(ValueError, match="exactly one"):
        SourceMapping.from_dict({"name": "x", "dataset": "x"})


# --- the shipped config and query sample -------------------------------------------------------


def shipped_sources():
    config = yaml.safe_load(resources.files("hf_pipeline").joinpath("configs/query_sources.yaml").read_text())
    return source_mappings(config)


def test_shipped_config_covers_the_paper_sources():
    sources = shipped_sources()
    assert {
        "wildchat", "lmsys_chat", "chatbot_arena", "oasst1", "no_robots", "helpsteer", "dolly",
        "gooaq", "sharelm", "expertqa", "chatdoctor_icliniq", "chatdoctor_healthcaremagic", "chatterbot",
    } <= set(sources)  # fmt: skip
    assert sources["wildchat"].dataset == "allenai/WildChat-1M"
    assert sources["oasst1"].where == {"parent_id": None, "role": "prompter", "lang": "en"}


def test_shipped_chatterbot_sample_extracts_cleanly_and_has_duplicates_to_remove():
    mapping = shipped_sources()["chatterbot"]
    rows = [json.loads(line) for line in (REPO_ROOT / mapping.dataset).read_text().splitlines()]
    texts = [normalize_whitespace(first_user_message(row, mapping)) for row in rows]
    assert all(check_query(text, max_chars=2000) is None for text in texts)
    assert len(rows) > 500
    assert len({dedup_key(text) for text in texts}) < len(texts)
