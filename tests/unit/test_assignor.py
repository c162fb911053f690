"""The coordinators' assignor: co-partitioned, sticky, balanced, and it shares who owns what."""

from __future__ import annotations

import itertools

import pytest
from aiokafka.cluster import ClusterMetadata

from streams.coordinator import CopartitionedAssignor
from streams.coordinator._assignor import plan


def _balanced(result: dict[str, list[int]], partitions: int) -> None:
    every = sorted(p for parts in result.values() for p in parts)
    assert every == list(range(partitions)), "each partition exactly once"
    sizes = [len(parts) for parts in result.values()]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize(("partitions", "members"), [(12, 1), (12, 2), (12, 5), (4, 7), (1, 3)])
def test_fresh_plans_are_balanced(partitions: int, members: int) -> None:
    names = [f"m{i}" for i in range(members)]
    result = plan(partitions, {}, names)
    _balanced(result, partitions)
    assert plan(partitions, {}, reversed(names)) == result, "member order does not matter"


def test_members_keep_what_they_own() -> None:
    first = plan(12, {}, ["a", "b", "c"])
    # d joins: a, b and c keep most of theirs, d takes one from each.
    second = plan(12, first, ["a", "b", "c", "d"])
    _balanced(second, 12)
    moved = sum(len(set(first[m]) - set(second[m])) for m in "abc")
    assert moved == 3 and len(second["d"]) == 3
    # b leaves: its partitions are spread, nobody else loses any.
    third = plan(12, second, ["a", "c", "d"])
    _balanced(third, 12)
    for member in "acd":
        assert set(second[member]) <= set(third[member])


def test_double_claims_and_nonsense_are_resolved() -> None:
    result = plan(4, {"a": [0, 1, 7, -1], "b": [1, 2]}, ["a", "b"])
    _balanced(result, 4)
    assert result["a"][:2] == [0, 1]


def test_every_permutation_of_claims_stays_a_partition() -> None:
    for claims in itertools.permutations([[0], [0, 1], [2, 3, 1], []], 3):
        owned = dict(zip("xyz", claims, strict=True))
        _balanced(plan(4, owned, "xyz"), 4)


def test_assign_hands_every_member_the_owner_map() -> None:
    alice = CopartitionedAssignor("http://a:1", 4)
    bob = CopartitionedAssignor("http://b:2", 4)
    topics = ["t.tasks", "t.step-results"]
    members = {"alice": alice.metadata(topics), "bob": bob.metadata(topics)}
    cluster = ClusterMetadata()
    cluster._partitions = {t: {p: None for p in range(4)} for t in topics}  # noqa: SLF001
    assignments = alice.assign(cluster, members)
    alice.on_assignment(assignments["alice"])
    bob.on_assignment(assignments["bob"])
    assert alice.owners == bob.owners
    assert set(alice.owners.values()) == {"http://a:1", "http://b:2"}
    assert alice.owned | bob.owned == {0, 1, 2, 3} and not alice.owned & bob.owned
    for member, assignment in assignments.items():
        by_topic = dict(assignment.assignment)
        assert by_topic["t.tasks"] == by_topic["t.step-results"], "co-partitioned"
        mine = alice if member == "alice" else bob
        assert set(by_topic["t.tasks"]) == mine.owned
