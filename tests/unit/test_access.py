"""The access file: principals, their tokens, groups and tenants, and the keys baton signs with."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from streams._access import Access, Identity, key_problem, load_access
from streams._policies import load_policies
from topics import ConfigurationError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

ENVIRON = {
    "BATON_TOKEN_ALICE": "alice-secret-token",
    "BATON_TOKEN_BOB": "bob-secret-token",
    "BATON_TOKEN_CAROL": "carol-secret-token",
    "BATON_APPROVAL_KEY": "a-signing-key-of-32-bytes-or-so!",
    "BATON_WORKER_KEY": "3f1c9a0be27d4856a1f0c3e9b7d2a4c6",
}
OLD_KEY = "an-older-key-still-trusted-by-us-all"


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
    verifying_only = load_access(write(tmp_path, text), {**ENVIRON, "OLD_KEY": OLD_KEY})
    assert verifying_only.signing_key is None
    assert set(verifying_only.keys) == {"k1", "old"}
    signing = load_access(
        write(tmp_path, text + "sign_with: k1\n"), {**ENVIRON, "OLD_KEY": OLD_KEY}
    )
    assert signing.signing_key == ("k1", ENVIRON["BATON_APPROVAL_KEY"].encode())
    assert signing.worker_key is None


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
        (
            "signing_keys:\n  k1: {env: SHORT}\n",
            {"SHORT": "short-key"},
            "signing_keys.k1.env: the key in SHORT must hold at least 32 bytes (it holds 9)",
        ),
        (
            "signing_keys:\n  k1: {env: DULL}\n",
            {"DULL": "ab" * 20},
            "signing_keys.k1.env: the key in DULL has only 2 distinct bytes",
        ),
        (
            "signing_keys:\n  k1: {env: MISSING}\n",
            {},
            "signing_keys.k1.env: the key in MISSING is not set",
        ),
        (
            "worker_key: {env: WEAK}\n",
            {"WEAK": "0123456789" * 4},
            "worker_key.env: the key in WEAK repeats a block of 10 bytes",
        ),
        (
            "signing_keys:\n  k1: {env: K}\nworker_key: {env: K}\n",
            {"K": OLD_KEY},
            "worker_key.env: K holds a signing key",
        ),
        (
            "principals:\n  alice: {token_env: T, tenants: [acme, a/b]}\n",
            {"T": "alice-token"},
            "principals.alice.tenants.1: 'a/b' is not a valid tenant name: '/' is not allowed",
        ),
        (
            "principals:\n  alice: {token_env: T}\nreviewers:\n  alice: {token_env: T}\n",
            {"T": "alice-token"},
            "reviewers.alice: named in `principals` too",
        ),
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


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("k" * 31, "must hold at least 32 bytes (it holds 31)"),
        ("abcabcabcabcabcabcabcabcabcabcabcabc", "has only 3 distinct bytes"),
        ("0123456789abcdef" * 2, "repeats a block of 16 bytes"),
        ("abcdefghijklmnopqrstuvwxyz012345", "is mostly a run of evenly spaced bytes"),
        ("31415926535897932384626433832795", "has about 106 bits of entropy; it needs 128"),
    ],
)
def test_weak_keys_are_named_for_what_makes_them_weak(key: str, problem: str) -> None:
    assert key_problem(key.encode()) == problem


@pytest.mark.parametrize(
    "key",
    [
        "5f0e3b9c1a7d4e2f8b6c0a9d3e7f1b4c5a2d8e0f6b3c9a1d7e4f2b8c0a6d3e9f",  # openssl rand -hex 32
        "q8ZkR2vT9mXc4LpW7sBn1YhG6dJf3NaE",
        ENVIRON["BATON_APPROVAL_KEY"],
    ],
)
def test_good_keys_pass(key: str) -> None:
    assert key_problem(key.encode()) is None


def test_principals_act_for_their_tenants(tmp_path: Path) -> None:
    access = load_access(
        write(
            tmp_path,
            "principals:\n"
            "  alice: {token_env: BATON_TOKEN_ALICE, groups: [leads], tenants: [acme]}\n"
            "  bob: {token_env: BATON_TOKEN_BOB, tenants: [acme, globex]}\n"
            '  carol: {token_env: BATON_TOKEN_CAROL, tenants: "*"}\n'
            "reviewers:\n"
            "  dave: {token_sha256: " + hashlib.sha256(b"dave").hexdigest() + "}\n"
            "worker_key: {env: BATON_WORKER_KEY}\n",
        ),
        ENVIRON,
    )
    alice = access.authenticate("alice-secret-token")
    assert alice == Identity("alice", frozenset({"leads"}), frozenset({"acme"}))
    assert alice.acts_for("acme") and not alice.acts_for("globex")
    assert alice.only_tenant == "acme"
    bob = access.authenticate("bob-secret-token")
    assert bob is not None and bob.acts_for("globex") and bob.only_tenant is None
    carol = access.authenticate("carol-secret-token")
    assert carol is not None and carol.acts_for("anything") and carol.only_tenant is None
    dave = access.authenticate("dave")  # the older `reviewers:` section: the default tenant
    assert dave is not None and dave.tenants == {"default"} and dave.only_tenant == "default"
    assert access.acts_for("user:alice", "acme") and not access.acts_for("user:alice", "b")
    assert not access.acts_for("user:nobody", "default")
    assert not access.acts_for("group:leads", "acme")
    assert access.identity("user:bob") == bob and access.identity("nobody") is None
    assert access.worker_key == ENVIRON["BATON_WORKER_KEY"].encode()


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
    assert carol.acts_for("acme") and not alice.acts_for("acme") and alice.acts_for("default")
    intake = access.authenticate("intake-demo-token")
    assert intake is not None and intake.acts_for("any-tenant") and intake.only_tenant is None
    assert access.worker_key == ENVIRON["BATON_WORKER_KEY"].encode()
    policies = load_policies(EXAMPLES / "policies.yaml")
    assert policies.approvals
