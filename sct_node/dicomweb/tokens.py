"""Bearer tokens of the DICOMweb senders: a TOML file of names and SHA-256 hashes of random tokens.

::

    [[token]]
    name = "orthanc-research"
    sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

``sct-node dicomweb-token add NAME --tokens FILE`` makes a token (32 random bytes, URL-safe), prints it once
and stores only its hash (atomically, mode 0600). A token is as strong as a long random key, so a plain
SHA-256 suffices (no slow hash: the search space is 2**256, and each request is checked). The file is read at
each request: a token added or removed takes effect without restarting the node.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import tomllib
from pathlib import Path

from models.fileio import write_atomic
from sct_node.errors import ConfigError

__all__ = ["add_token", "read_tokens", "verify_token"]

_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_HASH = re.compile(r"^[0-9a-f]{64}$")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def read_tokens(path: Path) -> dict[str, str]:
    """name -> SHA-256 of its token.

    Raises
    ------
    ConfigError
        The file cannot be read, is not TOML, or an entry lacks a valid name or hash.
    """
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"DICOMweb tokens file {path} cannot be read: {error}") from None
    tokens: dict[str, str] = {}
    for index, entry in enumerate(data.get("token", [])):
        name, digest = entry.get("name"), entry.get("sha256")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"{path}: token {index + 1} needs a name of letters, digits and ._@- (at most 64)")
        if not isinstance(digest, str) or not _HASH.match(digest):
            raise ConfigError(f"{path}: token {name!r} needs sha256, 64 lowercase hex digits")
        tokens[name] = digest
    return tokens


def verify_token(path: Path, token: str) -> str | None:
    """The name of the sender whose token this is, or None. Every entry is compared in constant time."""
    digest = _digest(token)
    found = None
    for name, expected in read_tokens(path).items():
        if hmac.compare_digest(digest, expected):
            found = name
    return found


def add_token(path: Path, name: str) -> str:
    """Make a token for ``name`` (replacing its old one) and return it; only its hash is stored.

    Raises
    ------
    ConfigError
        An invalid name, or a file that cannot be read or written.
    """
    if not _NAME.match(name):
        raise ConfigError(f"token name {name!r}: letters, digits and ._@- only, at most 64")
    tokens = read_tokens(path)
    token = secrets.token_urlsafe(32)
    tokens[name] = _digest(token)
    text = "".join(f'[[token]]\nname = "{entry}"\nsha256 = "{digest}"\n\n' for entry, digest in sorted(tokens.items()))
    try:
        write_atomic(Path(path), text.encode("utf-8"))
        Path(path).chmod(0o600)
    except OSError as error:
        raise ConfigError(f"DICOMweb tokens file {path} cannot be written: {error.strerror or error}") from None
    return token
