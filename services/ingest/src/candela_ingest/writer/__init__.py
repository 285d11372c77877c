"""The storage writers: consume the log topic in batches into ClickHouse and the Postgres usage counters."""
