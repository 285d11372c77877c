"""``python -m candela_ingest``: runs the IngestService."""

from candela_ingest.app import main
from candela_runtime.lifecycle import run

run(main, batch_gc=True, workers_variable="CANDELA_INGEST_WORKERS", module="candela_ingest")
