"""``sct-node console-user add``: add (or change) a user of the node's web console."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sct_node.cli.common import EXIT_OK, Subcommands


def add_parser(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """Add ``console-user`` to ``commands``, with the options every verb takes from ``common``."""
    from sct_node.console.users import MIN_PASSWORD_LENGTH, ROLES

    user = commands.add_parser(
        "console-user", parents=[common], help="add or change a user of the web console",
        description="Add a user of the web console ([console] users_file in node.toml), or give an existing one a "
                    "new role and password. The password is asked twice (or read from standard input with "
                    f"--password-stdin; at least {MIN_PASSWORD_LENGTH} characters) and stored as an argon2 hash; "
                    "the file is written atomically with mode 0600. Roles: viewer (sees everything), physicist "
                    "(and releases, dismisses, retries), admin.")
    user.add_argument("action", choices=["add"], help="what to do")
    user.add_argument("name", help="user name (letters, digits, ._@-)")
    user.add_argument("--role", required=True, choices=ROLES)
    user.add_argument("--users", required=True, type=Path, help="the users file ([console] users_file)")
    user.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    user.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Ask for the password and write the user."""
    import getpass

    from sct_node.console.users import add_user
    from sct_node.errors import InputError

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            raise InputError("the two passwords differ; nothing was changed")
    add_user(args.users, args.name, args.role, password)
    print(f"{args.name}: {args.role} in {args.users}")
    return EXIT_OK
