"""Who reviewers are, how they prove it, and the keys decisions are signed with.

The access file (``BATON_ACCESS_FILE``, YAML) names each reviewer, their groups and how their
bearer token is checked. It also names the HMAC signing keys. Secrets never live in the file:
it holds the *names* of environment variables (or a token's sha256)::

    reviewers:
      alice: {token_env: BATON_TOKEN_ALICE, groups: [leads]}
      bob:   {token_sha256: 9f86d0..., groups: [leads, managers]}
    signing_keys:
      k1: {env: BATON_APPROVAL_KEY}
    sign_with: k1

A reviewer's identity is ``user:<name>``; an approval step allows ``user:<name>`` and
``group:<name>`` principals.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from topics import ConfigurationError, describe_validation_error, load_yaml

__all__ = ["Access", "Identity", "load_access"]


class _ReviewerSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    token_env: str | None = Field(default=None, description="Env var holding the token.")
    token_sha256: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$", description="sha256 of the token, hex."
    )
    groups: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_way(self) -> _ReviewerSpec:
        if (self.token_env is None) == (self.token_sha256 is None):
            raise ValueError("give either `token_env` or `token_sha256`")
        return self


class _KeySpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    env: str = Field(description="Env var holding the key (at least 16 bytes).")


class _AccessSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    reviewers: dict[str, _ReviewerSpec] = Field(default_factory=dict)
    signing_keys: dict[str, _KeySpec] = Field(default_factory=dict)
    sign_with: str | None = None


@dataclass(frozen=True)
class Identity:
    """An authenticated reviewer."""

    user: str
    groups: frozenset[str]

    @property
    def principal(self) -> str:
        """``user:<name>``."""
        return f"user:{self.user}"


@dataclass(frozen=True)
class Access:
    """Reviewers and signing keys, secrets resolved.

    Attributes:
        groups: Each reviewer's groups, by user name.
        keys: Signing keys by id.
        sign_with: The key id this worker signs decisions with, if any.
    """

    groups: Mapping[str, frozenset[str]] = field(default_factory=dict)
    keys: Mapping[str, bytes] = field(default_factory=dict)
    sign_with: str | None = None
    _token_hashes: Mapping[str, bytes] = field(default_factory=dict, repr=False)

    def authenticate(self, token: str) -> Identity | None:
        """The reviewer a bearer token belongs to, or ``None``."""
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for user, expected in self._token_hashes.items():
            if hmac.compare_digest(digest, expected):  # compare all, in constant time each
                found = user
        return None if found is None else Identity(found, self.groups.get(found, frozenset()))

    def allows(self, principals: Iterable[str], approver: str) -> bool:
        """Whether ``approver`` (``user:<name>``) is one of, or in a group among, principals."""
        if not approver.startswith("user:"):
            return False
        user = approver.removeprefix("user:")
        groups = self.groups.get(user, frozenset())
        for principal in principals:
            if principal == approver:
                return True
            if principal.startswith("group:") and principal.removeprefix("group:") in groups:
                return True
        return False

    @property
    def signing_key(self) -> tuple[str, bytes] | None:
        """The id and key this worker signs with."""
        if self.sign_with is None:
            return None
        return self.sign_with, self.keys[self.sign_with]


def load_access(path: Path | None, environ: Mapping[str, str]) -> Access:
    """Read the access file and resolve its secrets from the environment.

    Raises:
        ConfigurationError: The file is unreadable or invalid, or a secret is missing; the
            message names the file and the field (never a secret's value).
    """
    if path is None:
        return Access()
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"), origin=str(path)) or {}
    except OSError as exc:
        raise ConfigurationError(f"cannot read access file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"access file {path} is not valid YAML: {exc}") from exc
    try:
        spec = _AccessSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigurationError(f"{path}: {describe_validation_error(exc)}") from None
    tokens: dict[str, bytes] = {}
    for user, reviewer in spec.reviewers.items():
        if reviewer.token_env is not None:
            token = environ.get(reviewer.token_env)
            if not token:
                raise ConfigurationError(
                    f"{path}: reviewers.{user}.token_env: {reviewer.token_env} is not set"
                )
            tokens[user] = hashlib.sha256(token.encode()).digest()
        else:
            assert reviewer.token_sha256 is not None
            tokens[user] = bytes.fromhex(reviewer.token_sha256)
    keys: dict[str, bytes] = {}
    for key_id, key in spec.signing_keys.items():
        value = environ.get(key.env, "")
        if len(value.encode()) < 16:
            raise ConfigurationError(
                f"{path}: signing_keys.{key_id}.env: {key.env} must hold at least 16 bytes"
            )
        keys[key_id] = value.encode()
    if spec.sign_with is not None and spec.sign_with not in keys:
        raise ConfigurationError(f"{path}: sign_with: no signing key {spec.sign_with!r}")
    return Access(
        groups={user: frozenset(r.groups) for user, r in spec.reviewers.items()},
        keys=keys,
        sign_with=spec.sign_with,
        _token_hashes=tokens,
    )
