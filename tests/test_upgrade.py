"""Upgrades of kdnas do not orphan run folders: a run's config hash (the identity that resume and sweep skipping
compare) is the one an older kdnas recorded for the same intent, whatever the spelling of today's keys."""

from __future__ import annotations

import pytest

from kdnas.api import compose
from kdnas.context import config_hash

# (task, overrides in today's spelling, the config hash kdnas recorded at c8237b2 for the same run spelled then:
# proxy=X, proxy.KEY=, search.evaluator=, search.objective=, +search.trainer.KEY=)
BEFORE_THE_EVALUATOR_GROUP = [
    ('search', [], '6fa24e3a60dfcae3'),
    ('search', ['strategy=akd'], '9a4b02b5cb9bae54'),
    ('search', ['strategy=akd', 'evaluator.trainer.epochs=1'], '9de420d5e1e5f74b'),
    ('search', ['evaluator.proxy=snip'], '7ddbf4530e64ca98'),
    ('search', ['evaluator.batch_size=32'], '4d3c5d0d8c629de1'),
    ('search', ['evaluator=train'], '6a4d9e282a280731'),
    ('search', ['strategy=kdas', 'evaluator.objective=ce'], '01e7ca5550252c7f'),
    ('search', ['strategy=akd', 'trainer.epochs=3'], '89e805a0b27a33a4'),
    ('pipeline', [], '5f5eb33f61e0a73b'),
    ('correlate', [], 'b74baf93637de6a6'),
    ('search', ['strategy=cream'], '77aade5e12242a02'),
    ('search', ['strategy=random', 'evaluator.proxy=synflow', 'evaluator.num_batches=2'], 'c5ea4fde0b7f89c1'),
]


@pytest.mark.parametrize(("task", "overrides", "recorded"), BEFORE_THE_EVALUATOR_GROUP)
def test_config_hash_is_the_one_recorded_before_the_evaluator_group(task: str, overrides: list[str],
                                                                    recorded: str) -> None:
    assert config_hash(compose(task, ["logger=none", *overrides])) == recorded


def test_the_candidates_own_recipe_still_changes_the_hash() -> None:
    """The legacy layout keeps every value: a key of evaluator.trainer set apart from the run's trainer counts."""
    base = config_hash(compose("search", ["logger=none", "strategy=akd"]))
    assert config_hash(compose("search", ["logger=none", "strategy=akd", "evaluator.trainer.lr=0.2"])) != base
    assert config_hash(compose("search", ["logger=none", "strategy=akd", "evaluator=proxy"])) != base


@pytest.mark.parametrize(("run", "candidates"), [("trainer.epochs=3", "evaluator.trainer.epochs=5"),
                                                 ("trainer.lr=0.2", "evaluator.trainer.lr=0.05")])
def test_a_candidates_key_at_the_shipped_value_apart_from_the_runs_changes_the_hash(run: str, candidates: str) -> None:
    """The candidates' recipe differs from the run's `trainer` (the old search.trainer) even where its value is the
    shipped one: two searches training their candidates differently never share a config hash (resume, sweep
    skipping)."""
    base = ["logger=none", "strategy=akd", run]
    apart, following = compose("search", [*base, candidates]), compose("search", base)
    assert apart.evaluator.trainer != following.evaluator.trainer
    assert config_hash(apart) != config_hash(following)
