"""The dead-letter topic: a message that cannot be stored is produced there, unchanged, with why.

The key and value are the original ones, so replaying a dead letter to the log topic is a plain copy.
The original headers (trace context) are kept; ``candela-dlq-*`` headers say what failed, how many times
storing was attempted in all (a letter that fails again after a replay adds to the count), and where the
message came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from candela_ingest.kafka import KafkaUnavailable, OutgoingMessage, Producer
from candela_ingest.writer.batch import DeadLetter
from candela_ingest.writer.errors import StoreUnavailable

HEADER_PREFIX = "candela-dlq-"
ERROR_HEADER = "candela-dlq-error"
ATTEMPTS_HEADER = "candela-dlq-attempts"
SOURCE_TOPIC_HEADER = "candela-dlq-source-topic"
SOURCE_PARTITION_HEADER = "candela-dlq-source-partition"
SOURCE_OFFSET_HEADER = "candela-dlq-source-offset"
FAILED_AT_HEADER = "candela-dlq-failed-at"
MAX_ERROR_BYTES = 2048


def previous_attempts(headers: Sequence[tuple[str, bytes]]) -> int:
    """The attempt count a message already carries from an earlier dead-lettering (0 if none)."""
    for key, value in headers:
        if key == ATTEMPTS_HEADER:
            try:
                return max(int(value.decode()), 0)
            except (UnicodeDecodeError, ValueError):
                return 0
    return 0


def dead_letter_headers(letter: DeadLetter, failed_at: datetime) -> list[tuple[str, bytes]]:
    """The letter's original headers, minus stale ``candela-dlq-*`` ones, plus the failure's."""
    source = letter.message
    kept = [(key, value) for key, value in source.headers if not key.startswith(HEADER_PREFIX)]
    attempts = previous_attempts(source.headers) + letter.attempts
    return [
        *kept,
        (ERROR_HEADER, letter.error.encode("utf-8", errors="replace")[:MAX_ERROR_BYTES]),
        (ATTEMPTS_HEADER, str(attempts).encode()),
        (SOURCE_TOPIC_HEADER, source.topic.encode()),
        (SOURCE_PARTITION_HEADER, str(source.partition).encode()),
        (SOURCE_OFFSET_HEADER, str(source.offset).encode()),
        (FAILED_AT_HEADER, failed_at.isoformat().encode()),
    ]


class KafkaDeadLetterSink:
    """Produces dead letters to the DLQ topic, acks=all."""

    def __init__(self, producer: Producer, topic: str) -> None:
        self._producer = producer
        self._topic = topic

    async def publish(self, letters: Sequence[DeadLetter]) -> None:
        """Returns once Kafka acknowledged every letter; StoreUnavailable otherwise (retry, do not commit)."""
        failed_at = datetime.now(UTC)
        messages = [
            OutgoingMessage(
                key=letter.message.key,
                value=letter.message.value or b"",
                headers=dead_letter_headers(letter, failed_at),
            )
            for letter in letters
        ]
        try:
            await self._producer.send_all(self._topic, messages)
        except KafkaUnavailable as err:
            raise StoreUnavailable(str(err)) from err
