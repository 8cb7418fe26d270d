"""Names on the bus of one kubus installation: stream, subjects, buckets, consumers.

Everything derives from a *prefix* (default ``kubus``), so that several installations (or test
runs) can share one NATS server, and from the partition count P, which is fixed for the life of
the stream: objects are placed by it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bus.errors import SubjectError
from bus.subjects import (
    DEFAULT_PARTITIONS,
    ObjectRef,
    ResourceType,
    decode_subject,
    encode_subject,
    partition_filter,
    resource_filter,
)

__all__ = ["BusLayout"]

_PREFIX = re.compile(r"^[a-z][a-z0-9]{0,31}$")
MAX_PARTITIONS = 1024


@dataclass(frozen=True)
class BusLayout:
    prefix: str = "kubus"
    partitions: int = DEFAULT_PARTITIONS

    def __post_init__(self) -> None:
        if not _PREFIX.match(self.prefix):
            raise SubjectError(
                f"bus prefix {self.prefix!r} must be 1-32 lowercase letters and digits, "
                "starting with a letter"
            )
        if not 1 <= self.partitions <= MAX_PARTITIONS:
            raise SubjectError(
                f"partitions must be between 1 and {MAX_PARTITIONS}, not {self.partitions}"
            )

    @property
    def object_stream(self) -> str:
        return f"{self.prefix.upper()}_OBJECTS"

    @property
    def object_subjects(self) -> str:
        return f"{self._subject_prefix}.>"

    @property
    def dead_letter_stream(self) -> str:
        """Deliveries a pool could not decode or apply, kept with the error for a person."""
        return f"{self.prefix.upper()}_DEAD_LETTERS"

    def dead_letter_subject(self, pool: str, partition: int) -> str:
        return f"{self.prefix}.dlq.{pool}.{partition}"

    @property
    def dead_letter_subjects(self) -> str:
        return f"{self.prefix}.dlq.>"

    @property
    def watcher_bucket(self) -> str:
        """Per-resource resume points of the watchers."""
        return f"{self.prefix}-watcher"

    def subject(self, ref: ObjectRef) -> str:
        return encode_subject(ref, self.partitions, prefix=self._subject_prefix)

    def decode(self, subject: str) -> tuple[int, ObjectRef]:
        return decode_subject(subject, prefix=self._subject_prefix)

    def partition_filter(self, partition: int) -> str:
        return partition_filter(partition, prefix=self._subject_prefix)

    def resource_filter(self, resource: ResourceType, partition: int | None = None) -> str:
        return resource_filter(resource, partition, prefix=self._subject_prefix)

    def cluster_scoped_filter(self, resource: ResourceType) -> str:
        """Every cluster-scoped object of one kind, across all partitions."""
        return f"{self._subject_prefix}.*.{resource.tokens}._.*"

    @property
    def _subject_prefix(self) -> str:
        return f"{self.prefix}.obj"
