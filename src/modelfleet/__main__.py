"""``python -m modelfleet`` runs the CLI."""

from modelfleet.cli import main

main()
