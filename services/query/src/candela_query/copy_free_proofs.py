"""The copy-free proofs of aggregates: which days of a span hold no two copies of a request, remembered.

An aggregate over a time span may skip FINAL (4-7x dearer on 18.16) when every day of the span is proven
free of copies (proofs in ``request_dedup_checks``) and nothing changed during the read. The days'
fingerprints are summed from those of the table's immutable parts, kept in memory, so only parts not seen
before are read for them.

In cluster mode (:class:`Site` per member) the parts are those of every member's ``requests_local``, read
from each member directly: a read through the Distributed table meets one replica of each shard, which one
is not known, and replicas that lag hold fewer rows (a copy may be on one and not yet on the other). So a
span is proven only when, on each of its days, every replica that answers holds the same rows as the others
of its shard (same fingerprint), and those rows, shard by shard, are free of copies; after the read every
member must still hold the same parts (else each is counted again), so whichever replica the read met, it
held the proven rows.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from candela_query.scope import Scope, SqlRunner
from candela_runtime.errors import Unavailable

DAY_SECONDS = 86_400
CLOSED_DAY_DELAY_SECONDS = 3_600
"""A day that ended this long ago is closed: proofs that it holds no copies are recorded only for closed days
(a day still receiving logs changes its fingerprint with every insert, so its proofs would only pile up)."""

_PARTS_SQL = (
    "SELECT groupArray(concat(name, ' ', toString(rows), ' ', toString(toUInt32(modification_time))))"
    " FROM system.parts WHERE database = currentDatabase() AND table = %(parts_table)s AND active"
)
"""The active parts of a site's requests table, each as "<name> <rows> <modification time>": a part never
changes, but its name alone could come back with other rows in a table dropped and created again, which the
remembered part fingerprints must not take for the old part. The fingerprints keep them as
"<site>|<part>", and "<site>|" says the site answered."""

REMEMBERED_ORGANIZATIONS = 256
"""Organizations whose part fingerprints and proven days are kept (the ones queried most recently)."""

Fingerprint = tuple[int, int]
"""(rows, sum of versions modulo 2**64) of a set of stored versions: any insert, merge or deletion changes it."""


@dataclass(frozen=True)
class Site:
    """Where rows of the requests table are stored, with its own parts: the one server, or one member (a
    replica of a shard) of a cluster, read directly."""

    name: str
    """Unique among the sites: "" for the one server, host:port of a member."""
    shard: int
    """The member's shard (replicas of a shard hold the same rows once they caught up); 0 for one server."""
    runner: SqlRunner
    table: str = "requests"
    """The table on the site: ``requests``, or a member's ``requests_local``."""

    @property
    def scope_table(self) -> str:
        """The name :class:`Scope` reads every stored version of the site's table by."""
        return "request_versions" if self.table == "requests" else "local_request_versions"


@dataclass(frozen=True)
class PartFingerprints:
    """What one immutable part holds of one organization: the fingerprint of each day with rows there,
    among ``counted_days`` (the days it was read for)."""

    counted_days: range
    days: dict[int, Fingerprint]

    def merged(self, later: PartFingerprints) -> PartFingerprints:
        """Both countings of the part when their days meet (each is exact for its days), else the later."""
        earlier_days, later_days = self.counted_days, later.counted_days
        if max(earlier_days.start, later_days.start) > min(earlier_days.stop, later_days.stop):
            return later
        counted_days = range(min(earlier_days.start, later_days.start), max(earlier_days.stop, later_days.stop))
        return PartFingerprints(counted_days, {**self.days, **later.days})


@dataclass(frozen=True)
class RememberedOrganization:
    """What is known of one organization's rows: the fingerprints of active parts, and for each day the
    last fingerprint found free of copies (a lasting fact, like a row of request_dedup_checks)."""

    parts: dict[str, PartFingerprints] = field(default_factory=dict)
    proven_days: dict[int, Fingerprint] = field(default_factory=dict)


@dataclass(frozen=True)
class CopyFreeProof:
    """The days of a span proven free of copies: the fingerprint of the span's days on each site that
    answered, the active parts (of every site) it was taken from, the part fingerprints read for it, and
    whether some days were checked after the parts were read (then only a recount confirms it)."""

    site_totals: dict[str, Fingerprint]
    parts: frozenset[str]
    counted: dict[str, PartFingerprints]
    checked_later: bool = False


class CopyFreeProofs:
    """Proves days free of copies, remembering the part fingerprints and proven days of the organizations
    queried last (REMEMBERED_ORGANIZATIONS). ``clock`` (epoch seconds) decides which days are closed
    enough to record proofs of. ``sites``: in cluster mode every member of the cluster (``runner`` then
    reads through the Distributed tables); by default the one server ``runner`` reads."""

    def __init__(
        self,
        runner: SqlRunner,
        scope: Scope,
        clock: Callable[[], float] = time.time,
        sites: list[Site] | None = None,
    ) -> None:
        self._runner = runner
        self._scope = scope
        self._clock = clock
        self._sites = {site.name: site for site in sites or [Site("", 0, runner)]}
        self._shards = frozenset(site.shard for site in self._sites.values())
        self._cluster = sites is not None
        self._remembered: OrderedDict[str, RememberedOrganization] = OrderedDict()

    @staticmethod
    def _day_range(span: tuple[int, int], params: dict[str, Any]) -> str:
        """The condition on created_at for the whole UTC days that ``span`` touches."""
        first_day = span[0] // 1_000_000 // DAY_SECONDS
        last_day = max(span[1] - 1, span[0]) // 1_000_000 // DAY_SECONDS
        params["first_day"], params["last_day"] = max(first_day, 0), max(last_day, 0)
        params["days_start"] = params["first_day"] * DAY_SECONDS
        params["days_end"] = min((params["last_day"] + 1) * DAY_SECONDS, 2**32 - 1)
        return "created_at >= toDateTime(%(days_start)s) AND created_at < toDateTime(%(days_end)s)"

    async def unchanged(self, organization_id: str, span: tuple[int, int], proof: CopyFreeProof) -> bool:
        """Whether the days of ``span`` still have the fingerprint of ``proof`` on every site. When the active
        parts are still those it was taken from (immutable; every insert, merge or mutation makes a new one,
        and a part that left never comes back), nothing changed at all and the rows need not be counted
        again. A member that came or went since (its rows unknown, or unknown whether a read met it before
        it went) fails the proof.

        The part fingerprints read for ``proof`` are remembered for the parts still active: those were
        active throughout, so their reading saw all their rows."""
        active = await self._active_parts()
        self._remember(organization_id, proof.counted, active)
        if active == proof.parts and not proof.checked_later:
            return True
        if _answered(active) != set(proof.site_totals):
            return False
        try:
            recounts = await asyncio.gather(
                *(self._recount(self._sites[name], organization_id, span) for name in proof.site_totals)
            )
        except Unavailable:
            if not self._cluster:
                raise
            return False
        return dict(zip(proof.site_totals, recounts, strict=True)) == proof.site_totals

    async def _recount(self, site: Site, organization_id: str, span: tuple[int, int]) -> Fingerprint:
        """The fingerprint of the days of ``span`` on ``site``, counted."""
        params: dict[str, Any] = {}
        scope = self._scope(organization_id, self._day_range(span, params), params, site.scope_table)
        count, version_sum = (await site.runner.fetch(f"SELECT count(), sum(version) {scope}", params))[0]
        return int(count), int(version_sum)

    async def _active_parts(self) -> frozenset[str]:
        """The active parts of every site that answers, as "<site>|<part>", and "<site>|" for each of them."""
        answers = await asyncio.gather(*(self._site_parts(site) for site in self._sites.values()))
        return frozenset().union(*answers)

    async def _site_parts(self, site: Site) -> frozenset[str]:
        """The active parts of ``site`` (see _PARTS_SQL); none, not even "<site>|", when a member is down
        (reads through the Distributed table pass it over as well)."""
        try:
            rows = await site.runner.fetch(_PARTS_SQL, {"parts_table": site.table})
        except Unavailable:
            if not self._cluster:
                raise
            return frozenset()
        return frozenset([f"{site.name}|", *(f"{site.name}|{part}" for part in rows[0][0])])

    def _remember(self, organization_id: str, counted: dict[str, PartFingerprints], active: frozenset[str]) -> None:
        """Keeps the fingerprints of the ``active`` parts, adding those just ``counted`` (the others left)."""
        remembered = self._remembered.get(organization_id, RememberedOrganization())
        kept = {part: fingerprints for part, fingerprints in remembered.parts.items() if part in active}
        for part, fingerprints in counted.items():
            if part in active:
                kept[part] = kept[part].merged(fingerprints) if part in kept else fingerprints
        self._keep(organization_id, RememberedOrganization(kept, remembered.proven_days))

    def _remember_proven(self, organization_id: str, proven_days: dict[int, Fingerprint]) -> None:
        """Keeps the fingerprints just found free of copies."""
        remembered = self._remembered.get(organization_id, RememberedOrganization())
        self._keep(organization_id, RememberedOrganization(remembered.parts, {**remembered.proven_days, **proven_days}))

    def _keep(self, organization_id: str, remembered: RememberedOrganization) -> None:
        self._remembered.pop(organization_id, None)
        self._remembered[organization_id] = remembered
        while len(self._remembered) > REMEMBERED_ORGANIZATIONS:
            self._remembered.popitem(last=False)

    async def proof(self, organization_id: str, span: tuple[int, int]) -> CopyFreeProof | None:
        """The fingerprint of the days of ``span`` when none of them holds two copies of a request, else
        None (then only FINAL reads them exactly).

        A day's fingerprint is the sum of those of the active parts, each read once per part and day (a
        part never changes) and remembered. A day is free of copies when a proof (remembered, or recorded
        in request_dedup_checks) has its current fingerprint, or when checking it now finds as many
        distinct (created_at_us, request_id) as rows: copies share both, whereas created_at_us alone
        collides between distinct requests on busy days (a day of 1M requests holds a few same-microsecond
        pairs), which would send such days to FINAL for good. Proofs of closed days are recorded, so each
        day is checked about once.
        """
        params: dict[str, Any] = {}
        self._day_range(span, params)  # the span's whole days: first_day, last_day
        span_days = range(params["first_day"], params["last_day"] + 1)
        # Read before any row is: unchanged compares them with the parts after the read.
        active = await self._active_parts()
        answered = _answered(active)
        if {self._sites[name].shard for name in answered} != self._shards:
            return None  # no member of a shard answers: a read fails (or meets one back meanwhile)
        parts = frozenset(part for part in active if not part.endswith("|"))
        remembered = self._remembered.get(organization_id, RememberedOrganization())
        counted_before = {part: remembered.parts[part].counted_days for part in parts if part in remembered.parts}
        uncounted = {
            part: missing
            for part in parts
            if (missing := [day for day in span_days if day not in counted_before.get(part, range(0))])
        }
        counted: dict[str, PartFingerprints] = {}
        if uncounted:
            # One read of the uncounted parts over the days some of them lack (a sliding span: its new days).
            first_day, last_day = (
                min(days[0] for days in uncounted.values()),
                max(days[-1] for days in uncounted.values()),
            )
            try:
                counted = await self._count_parts(organization_id, sorted(uncounted), range(first_day, last_day + 1))
            except Unavailable:
                if not self._cluster:
                    raise
                return None  # a member went away meanwhile: what a read meets is unknown
        current = {part: remembered.parts[part] for part in parts if part in remembered.parts}
        for part, part_fingerprints in counted.items():
            current[part] = current[part].merged(part_fingerprints) if part in current else part_fingerprints
        site_days: dict[str, dict[int, Fingerprint]] = {name: {} for name in answered}
        for part, part_fingerprints in current.items():
            days_of_site = site_days[part.split("|", 1)[0]]
            for day, fingerprint in part_fingerprints.days.items():
                if day in span_days:
                    days_of_site[day] = _plus(days_of_site.get(day, (0, 0)), fingerprint)
        fingerprints: dict[int, Fingerprint] = {}
        for shard in sorted(self._shards):
            replicas = [site_days[name] for name in sorted(answered) if self._sites[name].shard == shard]
            if any(replica != replicas[0] for replica in replicas[1:]):
                # A replica lags (or has a copy the other has not fetched yet): a read may meet either.
                return None
            for day, fingerprint in replicas[0].items():
                fingerprints[day] = _plus(fingerprints.get(day, (0, 0)), fingerprint)
        unproven = sorted(
            day for day, fingerprint in fingerprints.items() if remembered.proven_days.get(day) != fingerprint
        )
        checked_later = False
        if unproven:
            recorded = await self._recorded_proofs(organization_id, unproven)
            proven = {day: fingerprints[day] for day in unproven if (day, *fingerprints[day]) in recorded}
            unproven = [day for day in unproven if day not in proven]
            if unproven:
                checked = await self._check_days(organization_id, unproven)
                if any(distinct != count for count, _, distinct in checked.values()):
                    return None
                checked_fingerprints = {day: (count, version_sum) for day, (count, version_sum, _) in checked.items()}
                if self._cluster and any(checked_fingerprints.get(day) != fingerprints[day] for day in unproven):
                    # The check read through the Distributed table other rows than the members' parts hold
                    # (they changed meanwhile): which rows it proved is unknown.
                    return None
                fingerprints.update(checked_fingerprints)
                proven.update(checked_fingerprints)
                # Read after the parts: whether they changed meanwhile is unknown.
                checked_later = True
            self._remember_proven(organization_id, proven)
        if self._cluster:
            site_totals = {name: _total(site_days[name].values()) for name in sorted(answered)}
        else:
            site_totals = {"": _total(fingerprints.values())}
        return CopyFreeProof(site_totals, active, counted, checked_later)

    async def _recorded_proofs(self, organization_id: str, days: list[int]) -> set[tuple[int, int, int]]:
        """The (day, rows, sum of versions) of ``days`` recorded free of copies in request_dedup_checks."""
        params: dict[str, Any] = {"proof_days": tuple(days)}
        scope = self._scope(organization_id, "day IN %(proof_days)s", params, "request_dedup_checks")
        rows = await self._runner.fetch(f"SELECT day, row_count, version_sum {scope}", params)
        return {(int(day), int(count), int(version_sum)) for day, count, version_sum in rows}

    async def _count_parts(self, organization_id: str, parts: list[str], days: range) -> dict[str, PartFingerprints]:
        """The fingerprints of the organization's rows in each of ``parts`` ("<site>|<part>") on each of
        ``days``, each site's parts read from it (concurrently)."""
        by_site: dict[str, list[str]] = {}
        for part in parts:
            by_site.setdefault(part.split("|", 1)[0], []).append(part)
        counted: dict[str, PartFingerprints] = {}
        for site_counted in await asyncio.gather(
            *(self._count_site_parts(self._sites[name], organization_id, keys, days) for name, keys in by_site.items())
        ):
            counted.update(site_counted)
        return counted

    async def _count_site_parts(
        self, site: Site, organization_id: str, parts: list[str], days: range
    ) -> dict[str, PartFingerprints]:
        """The fingerprints of ``parts`` of ``site``: the server reads only those parts (pruned by their
        names) and only those days (by the primary key)."""
        by_name = {part.split("|", 1)[1].split(" ")[0]: part for part in parts}
        params: dict[str, Any] = {
            "counted_parts": tuple(sorted(by_name)),
            "count_start": days[0] * DAY_SECONDS,
            "count_end": min((days[-1] + 1) * DAY_SECONDS, 2**32 - 1),
        }
        condition = (
            "created_at >= toDateTime(%(count_start)s) AND created_at < toDateTime(%(count_end)s)"
            " AND _part IN %(counted_parts)s"
        )
        sql = (
            "SELECT _part, toUInt32(intDiv(toUInt32(created_at), 86400)) AS day, toUInt64(count()),"
            f" toUInt64(sum(version)) {self._scope(organization_id, condition, params, site.scope_table)}"
            " GROUP BY _part, day"
        )
        found: dict[str, dict[int, Fingerprint]] = {part: {} for part in parts}
        for name, day, count, version_sum in await site.runner.fetch(sql, params):
            found[by_name[str(name)]][int(day)] = (int(count), int(version_sum))
        return {part: PartFingerprints(days, day_fingerprints) for part, day_fingerprints in found.items()}

    async def _check_days(self, organization_id: str, days: list[int]) -> dict[int, tuple[int, int, int]]:
        """(rows, sum of versions, distinct identities) of each of ``days``; proofs of the closed ones that
        hold no copies are recorded."""
        params: dict[str, Any] = {
            "check_days": tuple(days),
            "check_start": days[0] * DAY_SECONDS,
            "check_end": min((days[-1] + 1) * DAY_SECONDS, 2**32 - 1),
        }
        condition = (
            "created_at >= toDateTime(%(check_start)s) AND created_at < toDateTime(%(check_end)s)"
            " AND intDiv(toUInt32(created_at), 86400) IN %(check_days)s"
        )
        sql = (
            "SELECT toUInt32(intDiv(toUInt32(created_at), 86400)) AS day, count(), sum(version),"
            " uniqExact(created_at_us, request_id) "
            f"{self._scope(organization_id, condition, params, 'request_versions')} GROUP BY day"
        )
        checked = {
            int(day): (int(count), int(total), int(distinct))
            for day, count, total, distinct in await self._runner.fetch(sql, params)
        }
        closed_before = int(self._clock()) - CLOSED_DAY_DELAY_SECONDS
        proofs = [
            (day, count, total)
            for day, (count, total, distinct) in checked.items()
            if count == distinct and (day + 1) * DAY_SECONDS <= closed_before
        ]
        if proofs:
            record = {"organization_id": str(uuid.UUID(organization_id)), "proofs": proofs}
            await self._runner.fetch(
                "INSERT INTO request_dedup_checks (organization_id, day, row_count, version_sum, checked_at)"
                " SELECT toUUID(%(organization_id)s), toUInt32(tupleElement(proof, 1)),"
                " toUInt64(tupleElement(proof, 2)), toUInt64(tupleElement(proof, 3)), now()"
                " FROM (SELECT arrayJoin(%(proofs)s) AS proof)",
                record,
            )
        return checked


def _answered(active: frozenset[str]) -> set[str]:
    """The sites whose parts are in ``active`` (see _active_parts)."""
    return {part[:-1] for part in active if part.endswith("|")}


def _plus(first: Fingerprint, second: Fingerprint) -> Fingerprint:
    """The fingerprint of two disjoint sets of stored versions together."""
    return first[0] + second[0], (first[1] + second[1]) % 2**64


def _total(fingerprints: Any) -> Fingerprint:
    """The fingerprint of every set in ``fingerprints`` (disjoint) together."""
    total: Fingerprint = (0, 0)
    for fingerprint in fingerprints:
        total = _plus(total, fingerprint)
    return total
