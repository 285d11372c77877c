"""``python -m candela_schema``: the same as ``candela-migrate``."""

from candela_schema.cli import run

run()
