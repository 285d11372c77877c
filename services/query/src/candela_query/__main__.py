"""``python -m candela_query``: runs the query service."""

from candela_query.app import main
from candela_runtime.lifecycle import run

run(main, workers_variable="CANDELA_QUERY_WORKERS", module="candela_query")
