"""instantiator_silver — paper §3.3, the silver data the Instantiator Model is distilled from.

"We create ~100K silver-standard examples and train a distilled model to instantiate instruction templates and
generate answers by fine-tuning Llama-3.2 3B Instruct. ... filter for high-quality instantiations and answers
with judge prompts ... We keep some instances of when the LLM determines a retrieved instruction template is not
compatible with the document as examples of when to output null instead of force a low-quality generation (~5%
of the total examples). ... We ensure these ~100K new examples are also well stratified in length, complexity
(number of template variables), and in topic using keyword-based filters to identify instruction-answer pairs
related to math and code to ensure balanced representation in the distillation examples."

No LLM here: run `instantiate` in teacher mode, then `judge`, then this stage, which selects from the judged rows.

- positives: instantiation ok and judged ≥ `min_score` (§3.4's threshold);
- nulls: rows where the teacher answered null (the template does not fit the document), sampled to be
  `null_fraction` of the output;
- positives are stratified by (answer-length quantile bucket, number of template variables, topic) and, when
  `max_examples` caps the set, drawn round-robin across the strata, so rare strata (long, complex, math, code)
  are all represented; every row not taken is counted by reason.

The documents are read by position, as instantiate reads them (the judged rows carry `doc_file`, `doc_row` and
the template's text from `match`), only for the rows that can become examples, from the columns the config keys
`doc_id_column` and `text_column` name (checked at plan time, with the documents' repo and commit against those the
judged rows' card lineage records instantiate read). The selection is a global step
over every judged row (~100K in the paper): a `reduce` with one partition.

Each row carries `messages`, the `fineinstructions/template_instantiator` student contract that instantiate's
student mode speaks: the user turn is JSON {"instruction_template", "document"} (document cut to
`max_document_chars`, as instantiate cuts it), the assistant turn is JSON {"instruction", "answer"} with the
answer as the teacher wrote it, excerpt tags and all (what the student must learn to write), or `null`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from hf_pipeline.errors import PipelineError
from hf_pipeline.methods.documents import check_documents_input, doc_id_field, text_field
from hf_pipeline.methods.pairs import MAX_DOCUMENT_CHARS, PromptLayout, check_documents_lineage, read_documents, user_message
from hf_pipeline.methods.text.strata import bucket_of, quantile_edges, round_robin_sample
from hf_pipeline.methods.text.templates import TemplateError, count_variables
from hf_pipeline.methods.text.topics import topic_of
from hf_pipeline.stage import Inputs, Map, Reduce, Stage, StageContext, add_row

JUDGED_COLUMNS = ("doc_id", "template_id", "template", "doc_file", "doc_row", "instruction", "answer", "raw_answer", "status",
                  "judge_score", "judge_status")
POSITIVE, NULL = "positive", "null"  # the two candidate kinds; any other `selection` value is a drop reason


@dataclass
class InstantiatorSilverConfig:
    documents: str = field(default="", metadata={"help": "documents dataset: the one instantiate read; read by position"})
    doc_id_column: str = doc_id_field()
    text_column: str = text_field()
    max_document_chars: int = field(
        default=MAX_DOCUMENT_CHARS,
        metadata={"help": "documents are cut to this many characters in the user message: set it as instantiate had it"},
    )
    prompt_layout: PromptLayout = field(
        default="template_first",
        metadata={"help": "the student's user message: template_first (the published instantiator's contract) or document_first "
                  "(the document first, so a model trained on it is served with prefix caching; serve it with the same layout)"},
    )
    min_score: int = field(default=4, metadata={"help": "positives need judge_score ≥ this (§3.4 keeps ≥ 4)"})
    null_fraction: float = field(default=0.05, metadata={"help": "share of null examples in the output (§3.3: ~5%)"})
    max_examples: int | None = field(default=None, metadata={"help": "cap on output rows, drawn round-robin over strata (None = all positives)"})
    length_buckets: int = field(default=4, metadata={"help": "answer-length strata: quantile buckets of the answer's characters"})
    max_variables_stratum: int = field(default=5, metadata={"help": "templates with this many variables or more share one complexity stratum"})
    seed: int = field(default=0, metadata={"help": "seed of the stratified draws"})


def check_config(config: InstantiatorSilverConfig) -> list[str]:
    if not config.documents:
        raise PipelineError("instantiator_silver needs config key 'documents' (the documents dataset instantiate read).")
    if not 0 <= config.null_fraction < 1:
        raise PipelineError(f"null_fraction must be in [0, 1), got {config.null_fraction}.")
    if config.length_buckets < 1 or config.max_variables_stratum < 1:
        raise PipelineError("length_buckets and max_variables_stratum must be at least 1.")
    if config.max_examples is not None and config.max_examples < 1:
        raise PipelineError(f"max_examples must be at least 1 (or unset), got {config.max_examples}.")
    return [config.documents]


def resolve_config(config: InstantiatorSilverConfig, plan) -> InstantiatorSilverConfig:
    """At plan time: the documents are those instantiate read (the judged rows' card lineage, when it says) and have
    the id and text columns the config names (one footer read)."""
    check_documents_lineage("instantiator_silver", config.documents, plan.pinned(config.documents), plan.part_refs[0])
    check_documents_input(config, plan, "instantiator_silver")
    return config


def selection_of(status: str, judge_status: str | None, judge_score: int | None, min_score: int) -> str:
    """positive, null, or why the row cannot be an example."""
    if status == "null":
        return NULL  # the teacher judged the template incompatible with the document: a "when to say null" example
    if status != "ok":
        return "not_ok"
    if judge_status != "ok" or judge_score is None:
        return "not_judged"
    return POSITIVE if judge_score >= min_score else "below_min_score"


def assistant_reply(instruction: str | None, raw_answer: str | None, is_null: bool) -> str:
    """The student's target: the reply instantiate's student mode parses (JSON null when the template does not fit)."""
    if is_null:
        return json.dumps(None)
    return json.dumps({"instruction": instruction, "answer": raw_answer}, ensure_ascii=False)


def silver_batch(batch: dict[str, list], ctx: StageContext) -> dict[str, list]:
    config: InstantiatorSilverConfig = ctx.config
    out: dict[str, list] = {k: [] for k in MAP_COLUMNS}
    selections = [selection_of(*r, config.min_score) for r in zip(batch["status"], batch["judge_status"], batch["judge_score"])]
    # the documents of the rows that can be examples, by position (as instantiate read them)
    wanted = [i for i, s in enumerate(selections) if s in (POSITIVE, NULL)]
    texts, problems = read_documents({k: [batch[k][i] for i in wanted] for k in ("doc_id", "doc_file", "doc_row")}, ctx)
    documents = {i: texts[j] for j, i in enumerate(wanted) if j not in problems}
    for j, (status, _) in problems.items():
        selections[wanted[j]] = status  # unknown_document / document_mismatch
    rows = zip(batch["doc_id"], batch["template_id"], batch["template"], batch["instruction"], batch["answer"],
               batch["raw_answer"], batch["status"], batch["judge_score"], selections)
    for i, (doc_id, tid, template, instruction, answer, raw_answer, status, score, selection) in enumerate(rows):
        num_variables, messages = 0, None
        if selection in (POSITIVE, NULL):
            if not template:
                selection = "unknown_template"
            else:
                try:
                    num_variables = count_variables(template)
                except TemplateError as e:
                    selection = e.reason  # a malformed template teaches the student nothing good
        if selection in (POSITIVE, NULL):
            user = user_message(template, documents[i][: config.max_document_chars], "student", config.prompt_layout)
            reply = assistant_reply(instruction, raw_answer, selection == NULL)
            messages = [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        is_null = selection == NULL
        add_row(
            out,
            doc_id=doc_id,
            template_id=tid,
            instruction=None if is_null else instruction,
            answer=None if is_null else raw_answer,
            judge_score=score,
            num_variables=num_variables,
        )
        # a null example has no pair: its topic is the template's
        out["topic"].append(topic_of(template) if is_null else topic_of(instruction, answer))
        out["answer_chars"].append(len(answer) if selection == POSITIVE and answer else 0)  # the expanded answer
        add_row(
            out,
            is_null=is_null,
            messages=messages,
            selection=selection,
            instantiate_status=status,
        )
    return out


def complexity_stratum(num_variables: int, cap: int) -> str:
    return f"{cap}+" if num_variables >= cap else str(num_variables)


def select_examples(ds, ctx: StageContext):
    """The global step, a reduce over one partition (every judged row of every shard): length buckets, the
    stratified draw of positives, the null share, counted drops."""
    import datasets

    config: InstantiatorSilverConfig = ctx.config
    selection = ds["selection"][:]
    keys = [f"{d}\x00{t}" for d, t in zip(ds["doc_id"][:], ds["template_id"][:])]
    num_variables, topics, answer_chars = ds["num_variables"][:], ds["topic"][:], ds["answer_chars"][:]
    positives = [i for i, s in enumerate(selection) if s == POSITIVE]
    nulls = [i for i, s in enumerate(selection) if s == NULL]
    drops = Counter(s for s in selection if s not in (POSITIVE, NULL))

    edges = quantile_edges([answer_chars[i] for i in positives], config.length_buckets)
    length_bucket = {i: bucket_of(answer_chars[i], edges) for i in positives}
    stratum = {
        i: (length_bucket[i], complexity_stratum(num_variables[i], config.max_variables_stratum), topics[i])
        for i in positives
    }

    # how many of each: max_examples splits into positives and nulls by null_fraction; without a cap every
    # positive is kept and the nulls are sized to be null_fraction of the total
    if config.max_examples is not None:
        n_pos = min(len(positives), config.max_examples - round(config.max_examples * config.null_fraction))
    else:
        n_pos = len(positives)
    n_null = min(len(nulls), round(n_pos * config.null_fraction / (1 - config.null_fraction)))
    taken_pos = [positives[j] for j in round_robin_sample([stratum[i] for i in positives], [keys[i] for i in positives], n_pos, config.seed)]
    # nulls have no answer length; they are spread over template complexity
    null_strata = [complexity_stratum(num_variables[i], config.max_variables_stratum) for i in nulls]
    taken_null = [nulls[j] for j in round_robin_sample(null_strata, [keys[i] for i in nulls], n_null, config.seed)]
    drops["not_selected"] += len(positives) - len(taken_pos)
    drops["null_not_selected"] += len(nulls) - len(taken_null)

    keep = sorted(taken_pos + taken_null)  # a filter: rows keep their input order
    out = ds.select(keep)
    out = out.add_column("length_bucket", [length_bucket.get(i) for i in keep], feature=datasets.Value("int32"))

    def by_stratum(rows: list[int]) -> dict[str, int]:
        return {"/".join(map(str, s)): n for s, n in sorted(Counter(stratum[i] for i in rows).items())}

    stats = {
        "positives_available": len(positives),
        "nulls_available": len(nulls),
        "null_share": round(len(taken_null) / len(keep), 4) if keep else 0.0,
        "length_bucket_edges_chars": edges,
        "strata_available": by_stratum(positives),  # keys: length bucket / variables / topic
        "strata_selected": by_stratum(taken_pos),
        "topic_selected": dict(sorted(Counter(topics[i] for i in taken_pos).items())),
        "num_variables_selected": dict(sorted(Counter(complexity_stratum(num_variables[i], config.max_variables_stratum) for i in taken_pos).items())),
        "length_bucket_selected": dict(sorted(Counter(str(length_bucket[i]) for i in taken_pos).items())),
        "not_ok_by_instantiate_status": dict(Counter(s for s, sel in zip(ds["instantiate_status"][:], selection) if sel == "not_ok").most_common()),
    }
    return out, {k: v for k, v in drops.items() if v}, stats


OUTPUT_COLUMNS = {
    "doc_id": "string",
    "template_id": "string",
    "instruction": "string",
    "answer": "string",  # raw, as the teacher wrote it: excerpt tags and all
    "judge_score": "int32",
    "num_variables": "int32",
    "topic": "string",  # math | code | other (hf_pipeline.methods.text.topics)
    "length_bucket": "int32",  # quantile bucket of the expanded answer's characters; null for null examples
    "is_null": "bool",
    "messages": "chat",
}
MAP_COLUMNS = {
    **{k: v for k, v in OUTPUT_COLUMNS.items() if k != "length_bucket"},  # needs every row's length: set in the reduce
    "answer_chars": "int32",
    "selection": "string",
    "instantiate_status": "string",
}

STAGE = Stage(
    name="instantiator_silver",
    description="silver data for the instantiator: judged teacher instantiations ≥ min_score plus null examples, stratified (§3.3)",
    config_class=InstantiatorSilverConfig,
    output_columns=OUTPUT_COLUMNS,
    inputs=Inputs(
        columns=JUDGED_COLUMNS,
        side=check_config,
        resolve_config=resolve_config,
    ),
    map=Map(
        batch=silver_batch,
        columns=MAP_COLUMNS,
    ),
    reduce=Reduce(
        step=select_examples,
        partitions=lambda config: 1,  # one global selection over ~100K judged rows
    ),
)
