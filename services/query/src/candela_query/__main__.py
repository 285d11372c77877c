"""``python -m candela_query``: runs the query service.

``CANDELA_QUERY_WORKERS`` defaults to 1: the service waits on ClickHouse, which spends 1.5-5x its CPU on
each request, and a second process gained nothing where they shared cores (bench/results/query-workers-*.md).
0 runs one per core (capped by the container's CPU limit) for a query pod whose own CPU is the limit.
"""

from candela_query.app import main
from candela_runtime.lifecycle import run

run(main, workers_variable="CANDELA_QUERY_WORKERS", default_workers=1, module="candela_query")
