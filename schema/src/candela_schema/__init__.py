"""Candela's stored schema: the Postgres and ClickHouse migrations and the migrator that applies them."""
