"""``python -m sct_node`` runs the command-line interface."""

from sct_node.cli import main

raise SystemExit(main())
