"""``python -m candela_auth``: runs the auth service."""

from candela_auth.app import main
from candela_runtime.lifecycle import run

run(main)
