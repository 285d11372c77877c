"""``python -m candela_cli`` runs the ``candela`` command."""

from candela_cli.main import run

run()
