"""The console's local users: a TOML file of names, roles and argon2 password hashes.

::

    [[user]]
    name = "alice"
    role = "physicist"
    password = "$argon2id$v=19$m=65536,t=3,p=4$..."

``sct-node console-user add NAME --role ROLE --users FILE`` writes it (atomically, mode 0600). The file
is read at each login, so a user added or removed takes effect without restarting the node. Roles:

* ``viewer``: sees jobs, reports, trends and the audit trail;
* ``physicist``: and releases, dismisses and retries jobs;
* ``admin``: everything a physicist may (and, as the console grows, its settings).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from models.fileio import write_atomic
from sct_node.errors import ConfigError, InputError

__all__ = ["ACTIONS", "ROLES", "User", "add_user", "allowed", "read_users", "verify_password"]

ROLES = ("viewer", "physicist", "admin")
#: What each action on a job needs.
ACTIONS = {"release": ("physicist", "admin"), "dismiss": ("physicist", "admin"), "retry": ("physicist", "admin")}
_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_HASHER = PasswordHasher()
#: Verified against when the name is unknown, so an unknown name costs as long as a wrong password.
_DUMMY_HASH = _HASHER.hash("not a password of anyone")
MIN_PASSWORD_LENGTH = 12


@dataclass(frozen=True)
class User:
    name: str
    role: str


def allowed(role: str, action: str) -> bool:
    """Whether ``role`` may do ``action`` (release, dismiss, retry)."""
    return role in ACTIONS.get(action, ())


def read_users(path: Path) -> dict[str, tuple[str, str]]:
    """name -> (role, password hash).

    Raises
    ------
    ConfigError
        The file cannot be read, is not TOML, or an entry lacks a valid name, role or hash.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{path}: the console's users file cannot be read: {error}") from None
    users: dict[str, tuple[str, str]] = {}
    for index, entry in enumerate(data.get("user", []), start=1):
        name, role, hashed = entry.get("name"), entry.get("role"), entry.get("password")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"{path}: user {index}: name must be 1-64 letters, digits or ._@-; found {name!r}")
        if role not in ROLES:
            raise ConfigError(f"{path}: user {name}: role must be one of {', '.join(ROLES)}; found {role!r}")
        if not isinstance(hashed, str) or not hashed.startswith("$argon2"):
            raise ConfigError(f"{path}: user {name}: password must be an argon2 hash (sct-node console-user add)")
        users[name] = (role, hashed)
    return users


def verify_password(path: Path, name: str, password: str) -> User | None:
    """The user when ``password`` is theirs; None otherwise (unknown name, wrong password)."""
    role, hashed = read_users(path).get(name, ("", _DUMMY_HASH))
    try:
        _HASHER.verify(hashed, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    return User(name, role) if role else None


def add_user(path: Path, name: str, role: str, password: str) -> None:
    """Add a user, or replace the one of that name (new role, new password).

    Raises
    ------
    InputError
        An invalid name or role, or a password shorter than MIN_PASSWORD_LENGTH.
    """
    if not _NAME.match(name):
        raise InputError(f"user name must be 1-64 letters, digits or ._@-; found {name!r}")
    if role not in ROLES:
        raise InputError(f"role must be one of {', '.join(ROLES)}; found {role!r}")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InputError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    users = read_users(path)
    users[name] = (role, _HASHER.hash(password))
    text = "# sct-node console users (sct-node console-user add). Passwords are argon2 hashes.\n" + "".join(
        f'\n[[user]]\nname = "{user}"\nrole = "{user_role}"\npassword = "{hashed}"\n'
        for user, (user_role, hashed) in sorted(users.items()))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda stream: stream.write(text.encode("utf-8")))
    path.chmod(0o600)
