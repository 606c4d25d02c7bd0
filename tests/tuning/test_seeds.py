"""Seeds load with clear errors, and tuning refuses to run on questions from the gold set."""

import json

import pytest

from core.errors import ConfigError
from core.settings import Settings
from tuning.seeds import (
    GoldOverlapError,
    Seed,
    check_gold_overlap,
    load_gold_questions,
    load_seeds,
)


def test_bad_seed_items_are_named_by_position_and_id(tmp_path):
    path = tmp_path / "seeds.yaml"
    path.write_text(
        "- {id: ok, kind: out_of_scope, user: bob, question: Write a poem}\n"
        "- {id: no-quote, kind: answered, user: bob, question: 'How many days?', answer: Ten, doc_id: leave-us}\n"
        "- {id: ok, kind: out_of_scope, user: bob, question: Tell a joke}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_seeds(path)
    assert "item 2 (no-quote)" in str(err.value) and "quote" in str(err.value)
    assert "duplicate seed id 'ok'" in str(err.value)


def test_a_seed_folder_loads_every_yaml_file_and_ids_must_be_unique_across_them(tmp_path):
    (tmp_path / "a.yaml").write_text("- {id: poem, kind: out_of_scope, user: bob, question: Write a poem}\n")
    (tmp_path / "b.yaml").write_text("- {id: joke, kind: out_of_scope, user: bob, question: Tell a joke}\n")
    (tmp_path / "notes.txt").write_text("not seeds")
    assert [s.id for s in load_seeds(tmp_path)] == ["poem", "joke"]
    (tmp_path / "c.yaml").write_text("- {id: poem, kind: out_of_scope, user: bob, question: A haiku}\n")
    with pytest.raises(ConfigError, match="c.yaml item 1: duplicate seed id 'poem'"):
        load_seeds(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no"):
        load_seeds(tmp_path / "empty")


def test_missing_seed_file_says_which_setting_to_use(tmp_path):
    with pytest.raises(ConfigError, match="POLICYRAG_TUNING_SEEDS_FILE"):
        load_seeds(tmp_path / "nope.yaml")


def test_a_seed_paraphrasing_a_gold_question_stops_the_build(tmp_path, embedder):
    gold = tmp_path / "gold.jsonl"
    gold.write_text(json.dumps({"id": "g1", "question": "How many days of annual leave can I carry over?"}) + "\n"
                    + json.dumps({"id": "g2", "turns": [{"question": "Who approves my expenses?"}]}) + "\n")
    questions = load_gold_questions(gold)
    assert questions == {"g1": "How many days of annual leave can I carry over?", "g2#1": "Who approves my expenses?"}
    clash = Seed(id="carry", kind="out_of_scope", user="alice", question="Tell me a joke",
                 paraphrases=("How many days of annual leave may I carry over?",))
    with pytest.raises(GoldOverlapError, match="seed 'carry'.*gold 'g1'"):
        check_gold_overlap([clash], questions, embedder.embed, 0.9)
    fine = Seed(id="poem", kind="out_of_scope", user="alice", question="Write a poem about autumn")
    check_gold_overlap([fine], questions, embedder.embed, 0.9)


def test_the_shipped_seed_file_is_valid_and_covers_every_kind(embedder):
    settings = Settings()
    seeds = load_seeds(settings.tuning_seeds_file)
    kinds = {s.kind for s in seeds}
    assert kinds == {"answered", "not_in_policy", "no_source", "out_of_scope", "escalate"}
    assert len(seeds) >= 100
    # and none of it may come from the locked gold set
    check_gold_overlap(seeds, load_gold_questions(settings.gold_set_file), embedder.embed,
                       settings.tuning_gold_overlap_threshold)
