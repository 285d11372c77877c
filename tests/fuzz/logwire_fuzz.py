"""Fuzzes the C wire decoder's entry points against the pure-Python reference, with atheris.

Each input is fed to both entry points of ``_logwire`` (``columns`` and ``ingest_request``) and of its twin
``_logwire_py``, and the answers are compared: what C decodes, the reference decodes alike (the same row,
the same "set but empty" mark; the same parts of a batch); what the reference leaves to the protobuf
runtime, C leaves too. C may leave more (encodings it does not take on), never less.

    uv run python -m tests.fuzz.logwire_fuzz [--extension PATH] [atheris/libFuzzer flags] [corpus dirs]

``--extension`` loads the C decoder from another build (the AddressSanitizer one: see
:mod:`tests.fuzz.asan`); ``make fuzz`` runs a bounded campaign from the seed corpus in ``corpus/``.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import inspect
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from candela.logs.v1 import log_record_pb2
from candela_ingest.wire import _logwire_py
from candela_ingest.wire.validation import EARLIEST_SECONDS

CORPUS = Path(__file__).with_name("corpus")
"""The seed corpus: a few valid LogMessages and IngestRequests (``seeds.py`` writes them), and as
``regression-*`` the inputs campaigns found that C and the reference read differently (kept small)."""

LIMITS = (20, 64 * 1024, 8 * 1024, EARLIEST_SECONDS, int(datetime(2026, 12, 3, 12, 5, tzinfo=UTC).timestamp()))
"""``ingest_request``'s limits: records, record bytes, metadata bytes, earliest and latest seconds."""


def load_extension(path: str | None) -> Any:
    """The C decoder: the installed build, or the one at ``path`` (e.g. built with AddressSanitizer)."""
    if path is None:
        from candela_ingest.wire import _logwire

        return _logwire
    loader = importlib.machinery.ExtensionFileLoader("_logwire", path)
    spec = importlib.util.spec_from_file_location("_logwire", path, loader=loader)
    assert spec is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _rows(columns: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
    return list(zip(*columns, strict=True))


def check_columns(extension: Any, values: list[bytes]) -> None:
    """``columns(values)``: C and the reference agree on every message C decodes."""
    c_columns, c_empty, c_fallback = extension.columns(values)
    py_columns, py_empty, py_fallback = _logwire_py.columns(values)
    assert set(py_fallback) <= set(c_fallback), f"C decoded what the reference leaves: {values!r}"
    c_rows, py_rows = _rows(c_columns), _rows(py_columns)
    # The reference's decoded messages, by position in values, and which of them C decoded too.
    py_decoded = [index for index in range(len(values)) if index not in set(py_fallback)]
    c_decoded = [index for index in range(len(values)) if index not in set(c_fallback)]
    py_row_of = dict(zip(py_decoded, py_rows, strict=True))
    py_empty_at = {py_decoded[position] for position in py_empty}
    for position, index in enumerate(c_decoded):
        assert c_rows[position] == py_row_of[index], f"C and the reference read {values[index]!r} differently"
        assert (position in c_empty) == (index in py_empty_at), f"set-but-empty differs for {values[index]!r}"


def _parsed_records(records: Sequence[bytes]) -> list[log_record_pb2.LogMessage]:
    return [log_record_pb2.LogMessage.FromString(record) for record in records]


def check_ingest_request(extension: Any, data: bytes) -> None:
    """``ingest_request(data, ...)``: what C passes, the reference passes with the same parts."""
    c_parts = extension.ingest_request(data, *LIMITS)
    if c_parts is None:
        return
    py_parts = _logwire_py.ingest_request(data, *LIMITS)
    assert py_parts is not None, f"C passed a batch the reference's exact checks leave: {data!r}"
    assert _parsed_records(c_parts[0]) == _parsed_records(py_parts[0])
    assert c_parts[1:5] == py_parts[1:5]
    assert [dict(context or {}) for context in c_parts[5]] == [dict(context or {}) for context in py_parts[5]]


def check(extension: Any, data: bytes) -> None:
    """Every comparison for one input: as one message, as a batch of its halves, as an IngestRequest."""
    middle = len(data) // 2
    check_columns(extension, [data])
    check_columns(extension, [data[:middle], data[middle:], data])
    check_ingest_request(extension, data)


def main(argv: list[str]) -> None:
    import atheris  # type: ignore[import-untyped]  # no stubs for 2.3.0 (types-atheris follows 3.x)

    extension_path = None
    if "--extension" in argv:
        at = argv.index("--extension")
        extension_path = argv[at + 1]
        del argv[at : at + 2]
    extension = load_extension(extension_path)
    # The coverage of the reference and of these checks guides the campaign (the C decoder is not built
    # for coverage: that takes clang, which atheris's own runtime needs too).
    for module in (_logwire_py, sys.modules[__name__]):
        for name, value in list(vars(module).items()):
            if inspect.isfunction(value) and value.__module__ == module.__name__:
                setattr(module, name, atheris.instrument_func(value))
    atheris.Setup(argv, lambda data: check(extension, data))
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
