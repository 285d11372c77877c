"""``python -m candela_ingest``: runs the IngestService.

``CANDELA_INGEST_WORKERS`` (default 0: one process per core, capped by the container's CPU limit) ingest
processes share the port: ingest is CPU-bound (~22 us per log) and a second process costs nothing per log
(bench/results/ingest-workers-*.md). 1 runs a single process with no supervisor.
"""

from candela_ingest.app import main
from candela_runtime.lifecycle import run

run(main, batch_gc=True, workers_variable="CANDELA_INGEST_WORKERS", default_workers=0, module="candela_ingest")
