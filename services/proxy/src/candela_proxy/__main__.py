"""``python -m candela_proxy``: runs the proxy, or its supervisor when it has more than one worker."""

from candela_proxy import supervisor
from candela_runtime import worker_metrics
from candela_runtime.lifecycle import run

if supervisor.supervises():
    run(supervisor.main)
else:
    # A worker keeps its metrics in memory and writes them to its multiprocess file in batches; this must
    # come before the modules that create metrics are imported.
    worker_metrics.install()
    # Imported only here: the supervisor does no request work, and need not load what serves requests.
    from candela_proxy.app import main

    run(main)
