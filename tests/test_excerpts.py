import pytest

from hf_pipeline.methods.text.excerpts import ExcerptError, ExcerptSpan, expand_excerpts

# Documents reconstructed from the paper's Appendix A: each contains the text printed there.
MEDICAL_NOTE_DOC = (
    "Structure and Synchronicity for Better Charting\n"
    "Two key characteristics will help you to ensure that your notes communicate not only what you did, "
    "but also what you were thinking.\n"
    "Fam Pract Manag. 2011 Jul-Aug;18(4):15-17.\n \n"
    "How many times have you read a medical note that does not make the selection of the diagnosis or "
    "treatment clear? Have you ever read your own notes after receiving notice of a malpractice suit and "
    "winced at the inconsistencies? Poorly constructed medical notes are a widespread problem.\n \n"
    "Documenting a confirmed diagnosis\n \n"
    "To begin, let’s review what should be included when documenting a confirmed diagnosis. "
    "Generally, six elements are needed…"
)
DIABETES_DOC = (
    "Spot writes: <<<<your dentist is correct diabetes is often accomnpied by severe periodontal disease and "
    "complicated by xerosomia (xerostomia, dry mouth)this results in increased incidence of caries and loss "
    "of teeth. also infections>>>>> Jack writes: <<<<>>>> Spot and Jack, I know all of this! No, Jack she "
    "didn’t see the start of periodontal disease, had the full workup and absolutely no sign of it at all."
)
# The printed answer has "1npm" where the printed document has "npm": a code block's line number that the
# appendix's rendering of the page dropped. The reconstruction keeps the code block on its own line.
GRAPHQL_DOC = (
    "Now, we know what application we are going to build. let’s apply all the best practices to build a "
    "Nodejs,GraphQL and TypeScript Server.\n \n"
    "This part is going to explain how to setup the application and create a query and mutations using "
    "GraphQL and TypeScript. we will be using type-graphql for your application. let’s install the required "
    "dependancies for our application,\n"
    "1npm i apollo-server-express express graphql reflect-metadata type-graphql mongoose…"
)
# §3.3's own example.
RELATIVITY_DOC = (
    "Motion is relative. It is known that no preferred inertial frame exists according to the principle "
    "of relativity. Hence the laws of physics take the same form in every inertial frame."
)
RELATIVITY_SENTENCE = "It is known that no preferred inertial frame exists according to the principle of relativity."


def visible(text: str) -> int:
    return len("".join(text.split()))


def reason_of(text: str, document: str) -> str:
    with pytest.raises(ExcerptError) as caught:
        expand_excerpts(text, document)
    return caught.value.reason


def assert_offsets_consistent(result, document: str) -> None:
    for span in result.excerpts:
        assert document[span.doc_start : span.doc_end] == result.answer[span.answer_start : span.answer_end]


# --- the paper's examples ---


def test_paper_relativity_example():
    result = expand_excerpts("<excerpt>It is known that<...>the principle of relativity.</excerpt>", RELATIVITY_DOC)
    assert result.answer == RELATIVITY_SENTENCE
    start = RELATIVITY_DOC.index(RELATIVITY_SENTENCE)
    assert result.excerpts == [ExcerptSpan(start, start + len(RELATIVITY_SENTENCE), 0, len(RELATIVITY_SENTENCE))]
    assert result.excerpt_ratio == 1.0


def test_paper_medical_note_answer():
    own_words = "To write a medical note, consider the following guidelines. "
    excerpt = (
        "To begin, let’s review what should be included when documenting a confirmed diagnosis. "
        "Generally, six elements are needed…"
    )
    result = expand_excerpts(
        own_words + "<excerpt>To begin, let’s review<...>six elements are needed…</excerpt>", MEDICAL_NOTE_DOC
    )
    assert result.answer == own_words + excerpt
    (span,) = result.excerpts
    assert MEDICAL_NOTE_DOC[span.doc_start : span.doc_end] == excerpt
    assert (span.answer_start, span.answer_end) == (len(own_words), len(own_words) + len(excerpt))
    assert result.excerpt_ratio == visible(excerpt) / (visible(own_words) + visible(excerpt))


def test_paper_diabetes_answer():
    own_words = "Diabetes has several effects, including being "
    answer = own_words + "<excerpt>often accomnpied by severe periodontal disease<...>loss of teeth.</excerpt>"
    result = expand_excerpts(answer, DIABETES_DOC)
    assert result.answer == own_words + (
        "often accomnpied by severe periodontal disease and complicated by xerosomia (xerostomia, dry "
        "mouth)this results in increased incidence of caries and loss of teeth."
    )
    assert_offsets_consistent(result, DIABETES_DOC)


def test_paper_diabetes_answer_as_printed_is_a_content_change():
    # The printed answer spells "accompined" where the document has "accomnpied": a rewrite, not a copy.
    with pytest.raises(ExcerptError) as caught:
        expand_excerpts("<excerpt>often accompined by severe<...>loss of teeth.</excerpt>", DIABETES_DOC)
    assert caught.value.reason == "excerpt_not_found"
    assert "often accompined by severe" in str(caught.value)


def test_paper_graphql_answer_keeps_document_newline():
    own_words = "To create a GraphQL schema and connect to a MongoDB database using type-graphql, follow these steps:\n"
    printed = own_words + (
        "we will be using type-graphql for your application. let’s install the required dependancies for our "
        "application, 1npm i apollo-server-express express graphql reflect-metadata type-graphql mongoose…"
    )
    result = expand_excerpts(
        own_words + "<excerpt>we will be using type-graphql<...>type-graphql mongoose…</excerpt>", GRAPHQL_DOC
    )
    assert "our application,\n1npm i" in result.answer  # the exact document slice, newline included
    assert " ".join(result.answer.split()) == " ".join(printed.split())
    assert result.answer.endswith("mongoose…") and GRAPHQL_DOC.endswith(result.answer[len(own_words) :])
    assert_offsets_consistent(result, GRAPHQL_DOC)


def test_paper_graphql_short_start_fragment_is_ambiguous():
    # "type-graphql" occurs twice with "mongoose…" after each: two different spans.
    assert reason_of("<excerpt>type-graphql<...>mongoose…</excerpt>", GRAPHQL_DOC) == "excerpt_ambiguous"


# --- not found ---


def test_unmatched_start():
    with pytest.raises(ExcerptError) as caught:
        expand_excerpts("<excerpt>It is believed that<...>the principle of relativity.</excerpt>", RELATIVITY_DOC)
    assert caught.value.reason == "excerpt_not_found"
    assert "It is believed that" in str(caught.value)


def test_unmatched_end():
    with pytest.raises(ExcerptError) as caught:
        expand_excerpts("<excerpt>It is known that<...>the principle of equivalence.</excerpt>", RELATIVITY_DOC)
    assert caught.value.reason == "excerpt_not_found"
    assert "the principle of equivalence." in str(caught.value)


def test_end_only_before_start_is_not_found():
    assert reason_of("<excerpt>It is known that<...>Motion is relative.</excerpt>", RELATIVITY_DOC) == (
        "excerpt_not_found"
    )


def test_unmatched_whole_span():
    assert reason_of("<excerpt>Motion is absolute.</excerpt>", RELATIVITY_DOC) == "excerpt_not_found"


@pytest.mark.parametrize(
    "excerpt",
    [
        "<excerpt>It is known that<...>the principle of relativity!</excerpt>",  # punctuation
        "<excerpt>It is Known that<...>the principle of relativity.</excerpt>",  # case
        "<excerpt>It is well known that<...>the principle of relativity.</excerpt>",  # an added word
        "<excerpt>It is known that no preferred frame exists</excerpt>",  # a dropped word
    ],
)
def test_content_changes_are_rejected(excerpt):
    assert reason_of(excerpt, RELATIVITY_DOC) == "excerpt_not_found"


def test_inserted_whitespace_is_a_change():
    # Runs of whitespace are interchangeable; whitespace where the document has none is not.
    assert reason_of("<excerpt>dry mouth) this results</excerpt>", DIABETES_DOC) == "excerpt_not_found"
    assert expand_excerpts("<excerpt>dry mouth)this results</excerpt>", DIABETES_DOC).answer == (
        "dry mouth)this results"
    )


# --- ambiguity ---

REPEATED_DOC = "Drink water. Sleep well. Drink water. Eat vegetables."


def test_repeated_sentence_is_ambiguous():
    assert reason_of("<excerpt>Drink water.</excerpt>", REPEATED_DOC) == "excerpt_ambiguous"


def test_repeated_start_fragment_is_ambiguous():
    # Two spans: "Drink water. Sleep well. Drink water. Eat vegetables." and "Drink water. Eat vegetables."
    assert reason_of("<excerpt>Drink water.<...>Eat vegetables.</excerpt>", REPEATED_DOC) == "excerpt_ambiguous"


def test_repeated_start_with_end_after_only_one_is_unique():
    result = expand_excerpts("<excerpt>Drink water.<...>Sleep well.</excerpt>", REPEATED_DOC)
    assert result.answer == "Drink water. Sleep well."
    assert result.excerpts[0].doc_start == 0


def test_repeated_end_takes_the_first_after_start():
    document = "Mix the flour. Then bake. Then cool. Then bake."
    result = expand_excerpts("<excerpt>Mix the flour.<...>Then bake.</excerpt>", document)
    assert result.answer == "Mix the flour. Then bake."


def test_overlapping_occurrences_are_ambiguous():
    assert reason_of("<excerpt>ha ha</excerpt>", "He laughed: ha ha ha.") == "excerpt_ambiguous"


def test_start_and_end_may_not_overlap():
    # END must begin after START ends; here the only "known that" lies inside START.
    assert reason_of("<excerpt>It is known that<...>known that</excerpt>", RELATIVITY_DOC) == "excerpt_not_found"


# --- whitespace at the seams ---


@pytest.mark.parametrize(
    "answer",
    [
        "<excerpt>It is known that <...> the principle of relativity. </excerpt>",  # spaces at the seams
        "<excerpt>\nIt is known that\n<...>\nthe principle of relativity.\n</excerpt>",  # newlines at the seams
        "<excerpt>It   is known\n that<...>the principle  of relativity.</excerpt>",  # runs inside fragments
    ],
)
def test_fragment_whitespace_is_tolerated(answer):
    assert expand_excerpts(answer, RELATIVITY_DOC).answer == RELATIVITY_SENTENCE


@pytest.mark.parametrize(
    "document",
    [
        "It is known\nthat no preferred inertial frame exists according to the\nprinciple of relativity.",
        "It is known  that no preferred inertial frame exists according to the  principle of relativity.",
        "It is\u00a0known that no preferred inertial frame exists according to the principle\tof relativity.",
    ],
)
def test_document_whitespace_is_tolerated_and_kept(document):
    result = expand_excerpts("<excerpt>It is known that<...>the principle of relativity.</excerpt>", document)
    assert result.answer == document  # the document's own whitespace, not the fragment's
    assert result.excerpts == [ExcerptSpan(0, len(document), 0, len(document))]


# --- several excerpts and the model's own words ---


def test_multiple_excerpts_with_own_words_between():
    document = "Red apples. Green pears. Blue plums."
    result = expand_excerpts("Fruit: <excerpt>Red apples.</excerpt> and <excerpt>Blue<...>plums.</excerpt>", document)
    assert result.answer == "Fruit: Red apples. and Blue plums."
    assert result.excerpts == [ExcerptSpan(0, 11, 7, 18), ExcerptSpan(25, 36, 23, 34)]
    assert_offsets_consistent(result, document)
    # visible characters: "Fruit:" 6, "Red apples." 10, "and" 3, "Blue plums." 10
    assert result.excerpt_ratio == 20 / 29


def test_multiple_excerpts_from_a_real_document():
    answer = (
        "Two things. First, <excerpt>Poorly constructed<...>widespread problem.</excerpt>\n"
        "Second, <excerpt>To begin,<...>confirmed diagnosis.</excerpt> That is the start."
    )
    result = expand_excerpts(answer, MEDICAL_NOTE_DOC)
    assert result.answer == (
        "Two things. First, Poorly constructed medical notes are a widespread problem.\n"
        "Second, To begin, let’s review what should be included when documenting a confirmed diagnosis. "
        "That is the start."
    )
    assert len(result.excerpts) == 2
    assert result.excerpts[0].doc_end < result.excerpts[1].doc_start
    assert_offsets_consistent(result, MEDICAL_NOTE_DOC)


# --- the ratio, by hand ---


def test_ratio_with_own_words():
    result = expand_excerpts("Yes. <excerpt>The cat<...>the mat.</excerpt>", "The cat sat on the mat.")
    assert result.answer == "Yes. The cat sat on the mat."
    assert result.excerpt_ratio == 18 / 22  # "Yes." 4; "The cat sat on the mat." 18


def test_ratio_ignores_whitespace():
    # Counting whitespace would give 12 / 15; visible characters give (5 + 4) / (2 + 5 + 4).
    result = expand_excerpts("ok <excerpt>alpha beta</excerpt>", "alpha\n\n\nbeta")
    assert result.answer == "ok alpha\n\n\nbeta"
    assert result.excerpt_ratio == 9 / 11


def test_ratio_of_answers_without_excerpts():
    result = expand_excerpts("The document does not say.", RELATIVITY_DOC)
    assert (result.answer, result.excerpts, result.excerpt_ratio) == ("The document does not say.", [], 0.0)
    assert expand_excerpts("", RELATIVITY_DOC).excerpt_ratio == 0.0
    assert expand_excerpts(" \n", RELATIVITY_DOC).excerpt_ratio == 0.0


def test_ratio_of_pure_excerpt_with_surrounding_whitespace():
    result = expand_excerpts("\n<excerpt>Motion is relative.</excerpt>\n", RELATIVITY_DOC)
    assert result.answer == "\nMotion is relative.\n"
    assert result.excerpt_ratio == 1.0
    assert result.excerpts == [ExcerptSpan(0, 19, 1, 20)]


def test_short_end_fragment():
    result = expand_excerpts("<excerpt>Hence the laws<...>.</excerpt>", RELATIVITY_DOC)
    assert result.answer == "Hence the laws of physics take the same form in every inertial frame."


# --- malformed markup ---


@pytest.mark.parametrize(
    "answer",
    [
        "<excerpt>Motion is relative.",  # never closed
        "Motion is relative.</excerpt>",  # stray close
        "<excerpt>Motion is relative.</excerpt></excerpt>",  # one close too many
        "<excerpt>Motion <excerpt>is relative.</excerpt></excerpt>",  # nested
        "<excerpt>Motion<...>is<...>relative.</excerpt>",  # two ellipses
        "As the text says <...> relativity.",  # ellipsis outside an excerpt
        "<excerpt></excerpt>",  # empty
        "<excerpt>  \n </excerpt>",  # blank
        "<excerpt><...>relative.</excerpt>",  # blank start
        "<excerpt>Motion is<...> </excerpt>",  # blank end
    ],
)
def test_malformed_markup(answer):
    assert reason_of(answer, RELATIVITY_DOC) == "malformed_excerpt"


def test_tags_inside_the_document_are_plain_text():
    # The document is never parsed for tags; only the answer is.
    document = "Use <excerpt> to quote and <...> to skip."
    result = expand_excerpts("<excerpt>Use<...>to skip.</excerpt>", document)
    assert result.answer == document


# --- both spellings in one answer ---


def test_both_excerpt_spellings_in_one_answer():
    """A whole-text excerpt and a start<...>end excerpt in one answer, in either order, each expanded on its own."""
    whole = "Motion is relative."
    last = "Hence the laws of physics take the same form in every inertial frame."
    answer = (f"In short: <excerpt>{whole}</excerpt> Also, <excerpt>It is known that<...>the principle of relativity.</excerpt>\n"
              f"<excerpt>{last}</excerpt>")
    result = expand_excerpts(answer, RELATIVITY_DOC)
    assert result.answer == f"In short: {whole} Also, {RELATIVITY_SENTENCE}\n{last}"
    assert [RELATIVITY_DOC[s.doc_start : s.doc_end] for s in result.excerpts] == [whole, RELATIVITY_SENTENCE, last]
    assert_offsets_consistent(result, RELATIVITY_DOC)
    assert result.excerpt_ratio == visible(whole + RELATIVITY_SENTENCE + last) / visible(result.answer)

    reverse = expand_excerpts(f"<excerpt>Hence the laws<...>inertial frame.</excerpt> <excerpt>{whole}</excerpt>", RELATIVITY_DOC)
    assert reverse.answer == f"{last} {whole}" and reverse.excerpt_ratio == 1.0
    assert [s.doc_start for s in reverse.excerpts] == [RELATIVITY_DOC.index(last), 0]
    assert_offsets_consistent(reverse, RELATIVITY_DOC)


def test_one_bad_excerpt_fails_a_mixed_answer():
    """Nothing is half expanded: a mixed answer with one excerpt that is not in the document, or ill-formed, fails."""
    good = "<excerpt>Motion is relative.</excerpt> "
    assert reason_of(good + "<excerpt>It is known<...>gravity.</excerpt>", RELATIVITY_DOC) == "excerpt_not_found"
    assert reason_of(good + "<excerpt>It is known<...>frame<...>.</excerpt>", RELATIVITY_DOC) == "malformed_excerpt"
    assert reason_of("<excerpt>It is known that<...>relativity.</excerpt> <excerpt>Motion is relative.", RELATIVITY_DOC) == "malformed_excerpt"
