"""Candela's local stack, three concerns in one distribution:

- the stack supervisor (this package's top level): installs and runs Postgres, Redis, ClickHouse,
  SeaweedFS (S3), a Kafka broker, the Candela services and the Envoy gateway; `stack` is the
  orchestration, `addresses` the address book, `python -m candela_stack` the command line;
- `envoy_config`: the gateway's Envoy configuration, generated on every start;
- `fake_provider`: the stand-in LLM provider the tests, the benches and `make run` talk to.

Kept import-light on purpose: `python -m candela_stack.fake_provider` imports this package too.
"""
