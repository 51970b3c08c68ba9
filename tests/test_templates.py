import pytest

from hf_pipeline.methods.text.templates import (
    Template,
    TemplateError,
    count_variables,
    parse_template,
    render_template,
    template_id,
    validate_template,
)

# Templates from the paper's Appendix A and §6.1.
MEDICAL_NOTE = (
    "I’m looking for a template or guidelines for how to write a "
    "<fi>type of document, e.g. technical report, research paper, etc.</fi>. The <fi>type of document</fi> is "
    "<fi>context or field of study</fi>-related and intended for a <fi>role or position</fi> to review the work "
    "of the <fi>task or investigation</fi> of a <fi>type of issue or problem</fi> related to <fi>field or industry</fi>."
)
EFFECTS = "what effects does <fi>a medical or psychological condition</fi> have?"
HOW_TO = (
    "how to <fi>a few word description of the action to be performed</fi> "
    "<fi>name of a service, system, or platform</fi>?"
)
COMPARE = "Compare and contrast <fi>entity A</fi> and <fi>entity B</fi>"


def reason_of(template: str, **kwargs) -> str:
    with pytest.raises(TemplateError) as caught:
        parse_template(template, **kwargs)
    return caught.value.reason


def test_single_variable():
    parsed = parse_template(EFFECTS)
    assert parsed.variables == ("a medical or psychological condition",)
    assert parsed.num_variables == 1
    start, end = parsed.spans[0]
    assert EFFECTS[start:end] == "<fi>a medical or psychological condition</fi>"


def test_multiple_variables_in_order():
    parsed = parse_template(MEDICAL_NOTE)
    assert parsed.variables == (
        "type of document, e.g. technical report, research paper, etc.",
        "type of document",
        "context or field of study",
        "role or position",
        "task or investigation",
        "type of issue or problem",
        "field or industry",
    )
    assert parsed.num_variables == 7
    assert all(MEDICAL_NOTE[start:end].startswith("<fi>") for start, end in parsed.spans)
    assert all(MEDICAL_NOTE[start:end].endswith("</fi>") for start, end in parsed.spans)
    assert [start for start, _ in parsed.spans] == sorted(start for start, _ in parsed.spans)


def test_adjacent_variables():
    parsed = parse_template(HOW_TO)
    assert parsed.variables == (
        "a few word description of the action to be performed",
        "name of a service, system, or platform",
    )


def test_same_description_twice_counts_twice():
    template = "Which is better for web development, <fi>programming language</fi> or <fi>programming language</fi>?"
    parsed = parse_template(template)
    assert parsed.variables == ("programming language", "programming language")
    assert parsed.num_variables == 2
    assert count_variables(template) == 2


def test_whitespace_inside_tags_is_stripped():
    parsed = parse_template("Write a critique of <fi>  media performance\n</fi>")
    assert parsed.variables == ("media performance",)


def test_tags_are_case_sensitive():
    assert reason_of("Write a critique of <FI>media performance</FI>") == "no_variables"
    assert reason_of("Write a critique of <fi>media performance</FI>") == "unbalanced_tag"


def test_nested_tag():
    assert reason_of("Compare <fi>entity <fi>A</fi></fi> and <fi>entity B</fi>") == "nested_tag"


def test_unclosed_opening_tag():
    assert reason_of("Compare and contrast <fi>entity A and <fi>entity B</fi>") == "nested_tag"
    assert reason_of("Compare and contrast <fi>entity A</fi> and <fi>entity B") == "unbalanced_tag"


def test_stray_closing_tag():
    assert reason_of("Compare and contrast entity A</fi> and <fi>entity B</fi>") == "unbalanced_tag"
    assert reason_of("Compare and contrast <fi>entity A</fi></fi> and <fi>entity B</fi>") == "unbalanced_tag"


def test_empty_variable():
    assert reason_of("what effects does <fi></fi> have?") == "empty_variable"
    assert reason_of("what effects does <fi>  \n </fi> have?") == "empty_variable"


def test_empty_template():
    assert reason_of("") == "empty_template"
    assert reason_of(" \n\t") == "empty_template"
    assert reason_of("  ", min_variables=0) == "empty_template"


def test_tag_free_template():
    query = "what effects does diabetes have?"
    assert reason_of(query) == "no_variables"
    assert validate_template(query) == "no_variables"
    assert parse_template(query, min_variables=0) == Template(text=query, variables=(), spans=())
    assert validate_template(query, min_variables=0) is None
    assert count_variables(query) == 0


def test_min_variables():
    assert validate_template(COMPARE, min_variables=2) is None
    assert validate_template(COMPARE, min_variables=3) == "no_variables"


def test_validate_template_returns_reason_or_none():
    assert validate_template(MEDICAL_NOTE) is None
    assert validate_template("how to <fi>action</fi> <fi>platform") == "unbalanced_tag"


def test_count_variables_rejects_malformed():
    with pytest.raises(TemplateError):
        count_variables("how to <fi>action</fi> <fi>platform")


def test_render_paper_example():
    # Appendix A: the template instantiated for the medical-note document.
    values = [
        "medical note",
        "medical note",
        "healthcare",
        "physician",
        "clinical investigation",
        "medical issue",
        "patient care",
    ]
    assert render_template(MEDICAL_NOTE, values) == (
        "I’m looking for a template or guidelines for how to write a medical note. The medical note is "
        "healthcare-related and intended for a physician to review the work of the clinical investigation "
        "of a medical issue related to patient care."
    )


def test_render_with_mapping_and_parsed_template():
    assert render_template(parse_template(HOW_TO), {1: "type-graphql", 0: "create a GraphQL schema with"}) == (
        "how to create a GraphQL schema with type-graphql?"
    )


def test_render_zero_variables():
    assert render_template("what effects does diabetes have?", []) == "what effects does diabetes have?"


def test_render_values_are_inserted_verbatim():
    assert render_template(EFFECTS, ["<fi>x</fi>  "]) == "what effects does <fi>x</fi>   have?"


def test_render_wrong_number_of_values():
    for values in (["diabetes", "asthma"], [], {0: "diabetes", 1: "asthma"}, {1: "diabetes"}):
        with pytest.raises(TemplateError) as caught:
            render_template(EFFECTS, values)
        assert caught.value.reason == "values_mismatch"


def test_render_rejects_a_bare_string():
    with pytest.raises(TypeError):
        render_template(EFFECTS, "diabetes")


def test_render_malformed_template():
    with pytest.raises(TemplateError) as caught:
        render_template("how to <fi>action</fi> <fi>platform", ["a", "b"])
    assert caught.value.reason == "unbalanced_tag"


def test_template_id_is_stable():
    # Pinned: ids are stored in published datasets and must not drift between versions.
    # The value is sha256(b"a <fi>b</fi>").hexdigest()[:16].
    assert template_id("a <fi>b</fi>") == "e24c0ba01c992d14"
    assert template_id(EFFECTS) == template_id(EFFECTS)
    assert len(template_id(EFFECTS)) == 16 and set(template_id(EFFECTS)) <= set("0123456789abcdef")


def test_template_id_ignores_whitespace_differences():
    assert template_id(COMPARE) == template_id("  Compare and\ncontrast   <fi>entity A</fi>\tand <fi>entity B</fi>\n")
    assert template_id(COMPARE) != template_id(COMPARE.replace("contrast", "Contrast"))
    assert template_id(COMPARE) != template_id(COMPARE.replace("and <fi>", "and<fi>"))
