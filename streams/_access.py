"""Who may call the API, for which tenants, and the keys decisions and workers sign with.

The access file (``BATON_ACCESS_FILE``, YAML) names each principal (a person or a system that
calls the API: reviewers, submitters, dashboards), how their bearer token is checked, their
groups, and the tenants they may act for. It also names the HMAC keys. Secrets never live in
the file: it holds the *names* of environment variables (or a token's sha256)::

    principals:                      # `reviewers:` is the older name of the same thing
      alice: {token_env: BATON_TOKEN_ALICE, groups: [leads], tenants: [acme]}
      bob:   {token_sha256: 9f86d0..., groups: [leads, managers], tenants: [acme, globex]}
      intake: {token_env: BATON_TOKEN_INTAKE, tenants: "*"}      # every tenant
    signing_keys:
      k1: {env: BATON_APPROVAL_KEY}
    sign_with: k1
    worker_key: {env: BATON_WORKER_KEY}   # workers authenticate their calls to each other

A principal's identity is ``user:<name>``; an approval step allows ``user:<name>`` and
``group:<name>`` principals. A principal without ``tenants`` acts for the tenant
``default`` only. Keys (signing keys and the worker key) must hold at least 32 bytes and not
be obviously guessable (``key_problem``).
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from topics import ConfigurationError, check_tenant, describe_validation_error, load_yaml

__all__ = [
    "ALL_TENANTS",
    "DEFAULT_TENANT",
    "MIN_KEY_BYTES",
    "Access",
    "Identity",
    "key_problem",
    "load_access",
]

#: The tenant a task belongs to when it names none, and the one principals act for by default.
DEFAULT_TENANT = "default"
#: In ``tenants``: every tenant.
ALL_TENANTS = "*"
#: The shortest key accepted (HMAC-SHA256 keys: 256 bits).
MIN_KEY_BYTES = 32
#: Keys estimated below this many bits are refused (see ``key_problem``).
_MIN_KEY_BITS = 128


def _tenant_or_all(value: str) -> str:
    return value if value == ALL_TENANTS else check_tenant(value)


_Tenant = Annotated[str, AfterValidator(_tenant_or_all)]


class _PrincipalSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    token_env: str | None = Field(default=None, description="Env var holding the token.")
    token_sha256: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$", description="sha256 of the token, hex."
    )
    groups: list[str] = Field(default_factory=list)
    tenants: list[_Tenant] = Field(
        default_factory=lambda: [DEFAULT_TENANT],
        description='The tenants it may act for; "*" for every tenant.',
    )

    @field_validator("tenants", mode="before")
    @classmethod
    def _all(cls, value: object) -> object:
        return [value] if value == ALL_TENANTS else value

    @model_validator(mode="after")
    def _one_way(self) -> _PrincipalSpec:
        if (self.token_env is None) == (self.token_sha256 is None):
            raise ValueError("give either `token_env` or `token_sha256`")
        return self

    def tenant_set(self) -> frozenset[str]:
        if ALL_TENANTS in self.tenants:
            return frozenset({ALL_TENANTS})
        return frozenset(self.tenants)


class _KeySpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    env: str = Field(description="Env var holding the key (at least 32 bytes).")


class _AccessSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    principals: dict[str, _PrincipalSpec] = Field(default_factory=dict)
    reviewers: dict[str, _PrincipalSpec] = Field(
        default_factory=dict, description="The older name of `principals`."
    )
    signing_keys: dict[str, _KeySpec] = Field(default_factory=dict)
    sign_with: str | None = None
    worker_key: _KeySpec | None = None


@dataclass(frozen=True)
class Identity:
    """An authenticated principal.

    Attributes:
        user: Its name in the access file.
        groups: Its groups.
        tenants: The tenants it may act for (``{"*"}``: every tenant).
    """

    user: str
    groups: frozenset[str]
    tenants: frozenset[str] = frozenset({DEFAULT_TENANT})

    @property
    def principal(self) -> str:
        """``user:<name>``."""
        return f"user:{self.user}"

    def acts_for(self, tenant: str) -> bool:
        """Whether it may act for a tenant (see its runs, submit its tasks, decide)."""
        return ALL_TENANTS in self.tenants or tenant in self.tenants

    @property
    def only_tenant(self) -> str | None:
        """Its tenant when it has exactly one (a task naming no tenant gets it), else ``None``."""
        if len(self.tenants) == 1 and ALL_TENANTS not in self.tenants:
            return next(iter(self.tenants))
        return None


@dataclass(frozen=True)
class Access:
    """Principals and keys, secrets resolved.

    Attributes:
        groups: Each principal's groups, by user name (every known principal is here).
        tenants: Each principal's tenants, by user name; one not listed here acts for
            ``default`` only, as in the file.
        keys: Signing keys by id.
        sign_with: The key id this worker signs decisions with, if any.
        worker_key: The key workers authenticate their calls to each other with, if any.
    """

    groups: Mapping[str, frozenset[str]] = field(default_factory=dict)
    tenants: Mapping[str, frozenset[str]] = field(default_factory=dict)
    keys: Mapping[str, bytes] = field(default_factory=dict)
    sign_with: str | None = None
    worker_key: bytes | None = field(default=None, repr=False)
    _token_hashes: Mapping[str, bytes] = field(default_factory=dict, repr=False)

    def identity(self, user: str) -> Identity | None:
        """A known principal by name (``alice``) or identity (``user:alice``)."""
        name = user.removeprefix("user:")
        if name not in self.groups:
            return None
        tenants = self.tenants.get(name, frozenset({DEFAULT_TENANT}))
        return Identity(name, self.groups[name], tenants)

    def authenticate(self, token: str) -> Identity | None:
        """The principal a bearer token belongs to, or ``None``."""
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for user, expected in self._token_hashes.items():
            if hmac.compare_digest(digest, expected):  # compare all, in constant time each
                found = user
        return None if found is None else self.identity(found)

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

    def acts_for(self, approver: str, tenant: str) -> bool:
        """Whether a known principal (``user:<name>``) may act for a tenant."""
        if not approver.startswith("user:"):
            return False
        identity = self.identity(approver)
        return identity is not None and identity.acts_for(tenant)

    @property
    def signing_key(self) -> tuple[str, bytes] | None:
        """The id and key this worker signs with."""
        if self.sign_with is None:
            return None
        return self.sign_with, self.keys[self.sign_with]


def key_problem(key: bytes) -> str | None:
    """Why a key is too weak to sign with, or ``None``.

    A key needs at least 32 bytes, and an estimated 128 bits: its length times the bits of
    the narrowest alphabet that holds it (3.3 for digits, 4 for hex, 5.9 for letters and
    digits, 6 for base64, 6.6 for printable ASCII, else 8). Keys with fewer than 8 distinct
    bytes, a repeated block, or mostly one step between neighbours (``abcdef...``) are
    refused whatever their length. ``openssl rand -hex 32`` makes a good one.
    """
    if len(key) < MIN_KEY_BYTES:
        return f"must hold at least {MIN_KEY_BYTES} bytes (it holds {len(key)})"
    distinct = len(set(key))
    if distinct < 8:
        return f"has only {distinct} distinct bytes"
    for size in range(1, len(key) // 2 + 1):
        if len(key) % size == 0 and key == key[:size] * (len(key) // size):
            return f"repeats a block of {size} bytes"
    steps = Counter((b - a) % 256 for a, b in zip(key, key[1:], strict=False))
    if steps.most_common(1)[0][1] * 2 >= len(key) - 1:
        return "is mostly a run of evenly spaced bytes"
    bits = len(key) * _bits_per_byte(key)
    if bits < _MIN_KEY_BITS:
        return f"has about {bits:.0f} bits of entropy; it needs {_MIN_KEY_BITS}"
    return None


def _bits_per_byte(key: bytes) -> float:
    text = set(key)
    for alphabet in (
        b"0123456789",
        b"0123456789abcdef",
        b"0123456789ABCDEF",
        b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
        b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+/=-_",
        bytes(range(0x20, 0x7F)),
    ):
        if text <= set(alphabet):
            return math.log2(len(set(alphabet)))
    return 8.0


def _key(path: Path, where: str, spec: _KeySpec, environ: Mapping[str, str]) -> bytes:
    value = environ.get(spec.env, "").encode()
    problem = key_problem(value) if value else "is not set"
    if problem is not None:
        raise ConfigurationError(
            f"{path}: {where}.env: the key in {spec.env} {problem}; "
            "make one with `openssl rand -hex 32`"
        )
    return value


def load_access(path: Path | None, environ: Mapping[str, str]) -> Access:
    """Read the access file and resolve its secrets from the environment.

    Raises:
        ConfigurationError: The file is unreadable or invalid, a secret is missing, or a key
            is weak; the message names the file and the field (never a secret's value).
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
    both = sorted(set(spec.principals) & set(spec.reviewers))
    if both:
        raise ConfigurationError(
            f"{path}: reviewers.{both[0]}: named in `principals` too (give each once)"
        )
    sections = [("principals", spec.principals), ("reviewers", spec.reviewers)]
    tokens: dict[str, bytes] = {}
    for section, principals in sections:
        for user, principal in principals.items():
            if principal.token_env is not None:
                token = environ.get(principal.token_env)
                if not token:
                    raise ConfigurationError(
                        f"{path}: {section}.{user}.token_env: {principal.token_env} is not set"
                    )
                tokens[user] = hashlib.sha256(token.encode()).digest()
            else:
                assert principal.token_sha256 is not None
                tokens[user] = bytes.fromhex(principal.token_sha256)
    keys = {
        key_id: _key(path, f"signing_keys.{key_id}", key, environ)
        for key_id, key in spec.signing_keys.items()
    }
    if spec.sign_with is not None and spec.sign_with not in keys:
        raise ConfigurationError(f"{path}: sign_with: no signing key {spec.sign_with!r}")
    worker_key = None
    if spec.worker_key is not None:
        worker_key = _key(path, "worker_key", spec.worker_key, environ)
        if worker_key in keys.values():
            raise ConfigurationError(
                f"{path}: worker_key.env: {spec.worker_key.env} holds a signing key; "
                "give workers a key of their own"
            )
    everyone = {**spec.reviewers, **spec.principals}
    return Access(
        groups={user: frozenset(p.groups) for user, p in everyone.items()},
        tenants={user: p.tenant_set() for user, p in everyone.items()},
        keys=keys,
        sign_with=spec.sign_with,
        worker_key=worker_key,
        _token_hashes=tokens,
    )
