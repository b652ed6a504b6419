"""The console's users file and `sct-node console-user add`: argon2 hashes, roles, mode 0600, clear errors."""

from __future__ import annotations

import io
import stat

import pytest

from sct_node.cli import EXIT_INPUT, EXIT_OK, main
from sct_node.console.sessions import LoginGuard
from sct_node.console.users import allowed, read_users, verify_password
from sct_node.errors import ConfigError


def test_console_user_add_stores_an_argon2_hash_readable_only_by_the_owner(tmp_path, monkeypatch, capsys):
    users = tmp_path / "users.toml"
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough secret\n"))
    assert main(["console-user", "add", "alice", "--role", "physicist", "--users", str(users),
                 "--password-stdin"]) == EXIT_OK
    assert "alice: physicist" in capsys.readouterr().out
    text = users.read_text()
    assert "a long enough secret" not in text and "$argon2id$" in text
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    assert verify_password(users, "alice", "a long enough secret").role == "physicist"
    assert verify_password(users, "alice", "a long enough secreT") is None
    assert verify_password(users, "nobody", "a long enough secret") is None
    # A second add changes the role and the password; the others stay.
    monkeypatch.setattr("sys.stdin", io.StringIO("another long secret\n"))
    main(["console-user", "add", "bob", "--role", "viewer", "--users", str(users), "--password-stdin"])
    monkeypatch.setattr("sys.stdin", io.StringIO("a brand new secret\n"))
    main(["console-user", "add", "alice", "--role", "admin", "--users", str(users), "--password-stdin"])
    assert {name: role for name, (role, _) in read_users(users).items()} == {"alice": "admin", "bob": "viewer"}
    assert verify_password(users, "alice", "a long enough secret") is None
    assert verify_password(users, "alice", "a brand new secret").role == "admin"


def test_weak_passwords_bad_names_and_broken_files_are_refused_clearly(tmp_path, monkeypatch, capsys):
    users = tmp_path / "users.toml"
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["console-user", "add", "alice", "--role", "viewer", "--users", str(users),
                 "--password-stdin"]) == EXIT_INPUT
    assert "at least 12 characters" in capsys.readouterr().err and not users.exists()
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough secret\n"))
    assert main(["console-user", "add", "../etc", "--role", "viewer", "--users", str(users),
                 "--password-stdin"]) == EXIT_INPUT
    users.write_text('[[user]]\nname = "eve"\nrole = "root"\npassword = "$argon2id$x"\n')
    with pytest.raises(ConfigError, match="role must be one of viewer, physicist, admin"):
        read_users(users)
    users.write_text('[[user]]\nname = "eve"\nrole = "admin"\npassword = "plain text"\n')
    with pytest.raises(ConfigError, match="must be an argon2 hash"):
        read_users(users)


def test_free_text_in_the_audit_csv_cannot_become_a_spreadsheet_formula():
    from sct_node.console.app import _cell

    assert _cell('=HYPERLINK("http://evil","click")') == '\'=HYPERLINK("http://evil","click")'
    assert _cell("+1") == "'+1" and _cell("@SUM(A1)") == "'@SUM(A1)"
    assert _cell("FAIL reviewed, dose fine") == "FAIL reviewed, dose fine"


def test_roles_and_the_login_lock_out():
    assert allowed("physicist", "release") and allowed("admin", "dismiss") and not allowed("viewer", "retry")
    guard = LoginGuard(max_failures=3, window_s=60, lockout_s=60)
    assert not any(guard.failed("alice", "10.0.0.1") for _ in range(2))
    assert guard.failed("alice", "10.0.0.1") and guard.locked("alice", "10.0.0.2")  # the name is locked
    assert guard.locked("bob", "10.0.0.1")  # and so is the address
    assert not guard.locked("bob", "10.0.0.3")


def test_a_session_ends_after_its_idle_time_and_at_logout():
    import time

    from sct_node.console.sessions import SessionStore
    from sct_node.console.users import User

    store = SessionStore(idle_timeout_s=0.2)
    token = store.create(User("alice", "physicist"))
    assert store.get(token).user.name == "alice" and store.get("forged") is None and store.get(None) is None
    time.sleep(0.3)
    assert store.get(token) is None  # idle too long
    token = store.create(User("alice", "physicist"))
    store.end(token)
    assert store.get(token) is None
    assert store.create(User("a", "viewer")) != store.create(User("a", "viewer"))
