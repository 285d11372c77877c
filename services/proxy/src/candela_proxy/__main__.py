"""``python -m candela_proxy``: runs the proxy, or its supervisor when it has more than one worker."""

from candela_proxy import supervisor
from candela_proxy.app import main
from candela_runtime.lifecycle import run

run(supervisor.main if supervisor.supervises() else main)
