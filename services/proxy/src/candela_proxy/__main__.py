"""``python -m candela_proxy``: runs the proxy, or its supervisor when it has more than one worker."""

from candela_proxy import supervisor
from candela_runtime.lifecycle import run

if supervisor.supervises():
    run(supervisor.main)
else:
    # Imported only here: the supervisor does no request work, and need not load what serves requests.
    from candela_proxy.app import main

    run(main)
