"""``python -m candela_ingest.writer``: runs one storage writer (a member of the writers' consumer group)."""

from candela_ingest.writer.app import main
from candela_runtime.lifecycle import run

run(main, batch_gc=True)
