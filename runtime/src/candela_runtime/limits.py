"""Bounds that several services enforce, declared once so that they agree.

A log is refused by ingest when it breaks these, and the proxy has by then answered its client: so the
proxy checks the same bounds before a request goes upstream (a 400 the client can act on), and the
services that produce what a log holds (the prompts service renders the inputs) refuse the same values.
"""

from __future__ import annotations

from collections.abc import Mapping

MAX_RECORD_BYTES = 64 * 1024 * 1024
"""Most bytes ingest takes for one log: its metadata and both bodies (ingest's CANDELA_MAX_RECORD_BYTES)."""

MAX_RECORD_METADATA_BYTES = 256 * 1024
"""Most bytes of one log's metadata (ingest's CANDELA_MAX_METADATA_BYTES): it travels through Kafka, whose
messages are capped at 1 MiB, and lands in one ClickHouse row."""

MAX_PROMPT_INPUTS_BYTES = 64 * 1024
"""Most UTF-8 bytes of a request's prompt inputs, every variable's name and value together. The inputs are
logged in the record's metadata; this leaves three quarters of MAX_RECORD_METADATA_BYTES to the rest of it
(properties, ids, attempts)."""

MAX_CANDELA_HEADER_BYTES = 64 * 1024
"""Most UTF-8 bytes of a request's Candela-* (and Helicone-*) headers, names and values together; most of
what they say (properties, user, session, prompt, targets) is logged in the metadata. With the prompt
inputs and a bounded model name, a log's metadata stays well within MAX_RECORD_METADATA_BYTES. (Envoy's
own limit on request headers, 60 KiB, is below it: this bounds requests sent to the proxy directly.)"""

MAX_MODEL_NAME_LENGTH = 1024
"""Longest ``model`` a request body may name (characters); it is logged in the metadata."""

MAX_TOKEN_COUNT = 2**32 - 1
"""Largest token count a log stores (the UInt32 columns of ClickHouse); a provider's larger or negative
count is out of range."""


def prompt_inputs_bytes(inputs: Mapping[str, str]) -> int:
    """The size of ``inputs`` as :data:`MAX_PROMPT_INPUTS_BYTES` measures it.

    A lone surrogate (text that cannot be UTF-8) counts three bytes: it is refused elsewhere, but must not
    make this raise.
    """
    return sum(
        len(name.encode("utf-8", "surrogatepass")) + len(value.encode("utf-8", "surrogatepass"))
        for name, value in inputs.items()
    )
