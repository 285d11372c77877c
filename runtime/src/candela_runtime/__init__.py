"""Shared runtime of Candela's services: config, logging, telemetry, errors and the gRPC bootstrap."""
