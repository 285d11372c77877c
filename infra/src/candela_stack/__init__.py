"""Candela's local stack: installs and runs Postgres, Redis, ClickHouse, SeaweedFS (S3), a Kafka broker,
the Candela services and the Envoy gateway (see `candela_stack.stack`), plus the fake LLM provider.

Kept import-light on purpose: `python -m candela_stack.fake_provider` imports this package too.
"""
