"""The C wire decoder (_logwire.c): serialized LogMessages straight into the writers' columns."""

from typing import Any

COLUMNS: tuple[str, ...]
"""The names of the columns :func:`columns` returns, in order."""

def columns(values: list[bytes], /) -> tuple[list[list[Any]], list[int], list[int]]:
    """(one list per name of COLUMNS, positions among the decoded of those with a cost or body reference set
    to its empty value, positions in ``values`` of the messages left to the protobuf runtime)."""
