"""Each LLM stage declares its LLM with `llm_field`: the paper's models and settings as defaults, a fresh LLMConfig per
config, the help line of its role."""

from __future__ import annotations

import dataclasses

import pytest

from hf_pipeline.llm.config import ROLE_HELP, TEACHER_MODEL, LLMConfig, llm_field
from hf_pipeline.stages import all_stages

# stage -> (default model, the settings that differ from LLMConfig's defaults, role)
PAPER_LLMS = {
    "genericize": ("fineinstructions/query_templatizer", {}, "student"),
    "instantiate": ("fineinstructions/template_instantiator", {"max_tokens": 1024}, "student"),
    "judge": ("flowaicom/Flow-Judge-v0.1", {}, "judge"),
    "genericizer_silver": ("meta-llama/Llama-3.3-70B-Instruct", {}, "teacher"),
    "match_labels": ("meta-llama/Llama-3.3-70B-Instruct", {}, "teacher"),
}


def _llm_stages() -> dict[str, type]:
    """The stages whose config has an LLMConfig field, by name, with their config class."""
    configs = {name: stage.config_class for name, stage in all_stages().items() if getattr(stage, "config_class", None)}
    return {name: config for name, config in configs.items()
            if any(isinstance(value, LLMConfig) for value in vars(config()).values())}


def test_every_llm_stage_defaults_to_the_papers_model_and_settings():
    stages = _llm_stages()
    assert set(stages) == set(PAPER_LLMS)
    for name, (model, settings, role) in PAPER_LLMS.items():
        fields = {f.name: f for f in dataclasses.fields(stages[name])}
        assert stages[name]().llm == LLMConfig(model=model, **settings), name
        assert fields["llm"].metadata["help"] == ROLE_HELP[role], name
        assert stages[name]().llm is not stages[name]().llm  # each config gets its own, so a --set changes one run's


def test_a_teacher_defaults_to_the_papers_teacher_and_only_a_teacher_has_a_default():
    @dataclasses.dataclass
    class Silver:
        llm: LLMConfig = llm_field(role="teacher", temperature=0.7)

    assert Silver().llm == LLMConfig(model=TEACHER_MODEL, temperature=0.7)
    for role in ("student", "judge"):
        with pytest.raises(ValueError, match=f"a {role} LLM has no default model"):
            llm_field(role=role)
