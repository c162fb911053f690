"""The access file: reviewers, their tokens and groups, and the keys decisions are signed with."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from streams._access import Access, Identity, load_access
from streams._policies import load_policies
from topics import ConfigurationError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

ENVIRON = {
    "BATON_TOKEN_ALICE": "alice-secret-token",
    "BATON_TOKEN_BOB": "bob-secret-token",
    "BATON_TOKEN_CAROL": "carol-secret-token",
    "BATON_APPROVAL_KEY": "a-signing-key-of-32-bytes-or-so!",
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "access.yaml"
    path.write_text(text)
    return path


def test_tokens_map_to_identities_with_their_groups(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"bob-secret-token").hexdigest()
    access = load_access(
        write(
            tmp_path,
            "reviewers:\n"
            "  alice: {token_env: BATON_TOKEN_ALICE, groups: [leads]}\n"
            f"  bob: {{token_sha256: {digest}, groups: [leads, managers]}}\n",
        ),
        ENVIRON,
    )
    assert access.authenticate("alice-secret-token") == Identity("alice", frozenset({"leads"}))
    bob = access.authenticate("bob-secret-token")
    assert bob is not None and bob.principal == "user:bob"
    assert bob.groups == {"leads", "managers"}
    assert access.authenticate("") is None
    assert access.authenticate("alice-secret-token ") is None
    assert access.authenticate(digest) is None  # the hash is not the token


def test_who_may_decide() -> None:
    access = Access(groups={"alice": frozenset({"leads"}), "mallory": frozenset()})
    assert access.allows(["group:leads"], "user:alice")
    assert access.allows(["user:mallory", "group:x"], "user:mallory")
    assert not access.allows(["group:leads"], "user:mallory")
    assert not access.allows(["group:leads"], "group:leads")  # a group is not an approver
    assert not access.allows(["user:bob"], "user:alice")
    assert not access.allows([], "user:alice")


def test_signing_keys_come_from_the_environment(tmp_path: Path) -> None:
    text = "signing_keys:\n  k1: {env: BATON_APPROVAL_KEY}\n  old: {env: OLD_KEY}\n"
    verifying_only = load_access(
        write(tmp_path, text), {**ENVIRON, "OLD_KEY": "an-older-key-still-trusted"}
    )
    assert verifying_only.signing_key is None
    assert set(verifying_only.keys) == {"k1", "old"}
    signing = load_access(
        write(tmp_path, text + "sign_with: k1\n"), {**ENVIRON, "OLD_KEY": "x" * 16}
    )
    assert signing.signing_key == ("k1", ENVIRON["BATON_APPROVAL_KEY"].encode())


@pytest.mark.parametrize(
    ("text", "environ", "message"),
    [
        (
            "reviewers:\n  alice: {token_env: MISSING}\n",
            {},
            "reviewers.alice.token_env: MISSING is not set",
        ),
        (
            "reviewers:\n  alice: {groups: [leads]}\n",
            {},
            "give either `token_env` or `token_sha256`",
        ),
        ("reviewers:\n  alice: {token_sha256: abc}\n", {}, "reviewers.alice.token_sha256"),
        ("signing_keys:\n  k1: {env: SHORT}\n", {"SHORT": "short"}, "at least 16 bytes"),
        ("sign_with: k9\n", {}, "sign_with: no signing key 'k9'"),
        ("reviewer: {}\n", {}, "reviewer: Extra inputs are not permitted"),
        ("reviewers: [\n", {}, "is not valid YAML"),
    ],
)
def test_a_bad_access_file_names_the_file_and_the_field(
    tmp_path: Path, text: str, environ: dict[str, str], message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigurationError) as caught:
        load_access(path, environ)
    assert str(path) in str(caught.value) and message in str(caught.value)
    for secret in environ.values():
        assert secret not in str(caught.value)


def test_no_access_file_means_nobody_may_decide() -> None:
    access = load_access(None, ENVIRON)
    assert access.authenticate("alice-secret-token") is None and access.signing_key is None


def test_the_examples_load() -> None:
    access = load_access(EXAMPLES / "access.yaml", ENVIRON)
    assert access.signing_key is not None
    alice = access.authenticate("alice-secret-token")
    assert alice is not None and access.allows(["group:leads"], alice.principal)
    carol = access.authenticate("carol-demo-token")
    assert carol is not None and access.allows(["group:finance"], carol.principal)
    policies = load_policies(EXAMPLES / "policies.yaml")
    assert policies.approvals
