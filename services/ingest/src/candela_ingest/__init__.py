"""Candela ingest: the IngestService (bodies to S3, metadata to Kafka) and the storage writers."""
