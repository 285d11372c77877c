"""``python -m candela_proxy``: runs the proxy."""

from candela_proxy.app import main
from candela_runtime.lifecycle import run

run(main)
