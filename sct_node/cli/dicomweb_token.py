"""``sct-node dicomweb-token add``: make a bearer token for a sender of the node's STOW-RS service."""

from __future__ import annotations

import argparse
from pathlib import Path

from sct_node.cli.common import EXIT_OK, Subcommands


def add_parser(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """Add ``dicomweb-token`` to ``commands``, with the options every verb takes from ``common``."""
    token = commands.add_parser(
        "dicomweb-token", parents=[common], help="make a bearer token for a DICOMweb (STOW-RS) sender",
        description="Make a random bearer token for a sender of the node's STOW-RS service ([dicomweb] tokens_file "
                    "in node.toml), replacing that sender's old token. The token is printed once, here; the file "
                    "keeps only its SHA-256 and is written atomically with mode 0600. The sender sends it as "
                    "'Authorization: Bearer TOKEN' (in Orthanc: DicomWeb.Servers.<name>.HttpHeaders).")
    token.add_argument("action", choices=["add"], help="what to do")
    token.add_argument("name", help="the sender's name (letters, digits, ._@-); instances it stores are recorded "
                                    "as sent by STOW:NAME (what a route's match.calling_ae sees)")
    token.add_argument("--tokens", required=True, type=Path, help="the tokens file ([dicomweb] tokens_file)")
    token.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Make the token and print it."""
    from sct_node.dicomweb.tokens import add_token

    print(add_token(args.tokens, args.name))
    return EXIT_OK
