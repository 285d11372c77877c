"""A short fuzzing campaign of the C wire decoder against its pure-Python twin (atheris), and the decoder
built with AddressSanitizer fed the seed corpus and random inputs. ``make fuzz`` runs both for longer."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from candela.logs.v1 import log_record_pb2
from candela_ingest.wire import _logwire
from tests.fuzz import asan
from tests.fuzz.logwire_fuzz import CORPUS, check, check_columns, check_ingest_request

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_a_short_atheris_campaign_finds_no_difference(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "tests.fuzz.logwire_fuzz", "-max_total_time=4", "-seed=1"]
    result = subprocess.run([*command, str(tmp_path), str(CORPUS)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Done" in result.stderr


def test_the_decoder_built_with_addresssanitizer_takes_the_corpus_and_random_inputs() -> None:
    result = asan.run(seconds=4, seed=1)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "no fault" in result.stdout


def test_every_seed_reads_alike_in_c_and_in_python() -> None:
    seeds = sorted(CORPUS.iterdir())
    assert seeds
    for seed in seeds:
        check(_logwire, seed.read_bytes())


def _log() -> bytes:
    record = log_record_pb2.LogRecord(request_id=str(uuid.uuid4()), model="m")
    return log_record_pb2.LogMessage(record=record).SerializeToString()


def test_the_comparison_catches_a_decoder_that_reads_a_value_differently() -> None:
    def columns(values: list[bytes]) -> Any:
        lists, empty, fallback = _logwire.columns(values)
        lists[_logwire.COLUMNS.index("model")] = ["not m"] * len(lists[0])
        return lists, empty, fallback

    with pytest.raises(AssertionError, match="differently"):
        check_columns(SimpleNamespace(columns=columns), [_log()])


def test_the_comparison_catches_a_decoder_that_reads_what_the_reference_leaves() -> None:
    update = log_record_pb2.LogMessage(update=log_record_pb2.LogUpdate(request_id="r")).SerializeToString()

    def columns(values: list[bytes]) -> Any:
        lists, empty, _ = _logwire.columns([_log() for _ in values])
        return lists, empty, []

    with pytest.raises(AssertionError, match="reference leaves"):
        check_columns(SimpleNamespace(columns=columns), [update])
    with pytest.raises(AssertionError, match="reference's exact checks leave"):
        check_ingest_request(SimpleNamespace(ingest_request=lambda *_: ([], [], [], [], [], [])), b"\xff")
