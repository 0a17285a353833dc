"""The gate: every known credential, in memory, answered without I/O.

One dict entry per credential: key = the 32 raw bytes of its SHA-256 digest, value = one
packed `bytes` object

    state (1 B) | valid_until (8 B, POSIX seconds, double) | org index (4 B) |
    len(scanner_id) (2 B) | scanner_id (UTF-8) | credential_id (UTF-8)

Organisation ids are interned in a table (many scanners share one). Two `bytes` objects and a
dict slot per credential, and no object the garbage collector tracks: about 170 B per
credential with uuid-sized ids, against about 300 B for a `__slots__` object holding three
strings (measured with tracemalloc). Decoding costs one `struct.unpack_from` and two slices on
an accepted upload only.

Lookups go through a dict keyed by the digest: bytes hashing uses a per-process random key
(SipHash), so response timing cannot be steered towards a stored digest, and a digest is of a
credential with 256 random bits, so learning part of one would not help find a credential.

The gate is written by one task (`gate_sync.GateSync`) and read by the uploads of the same event
loop (`handlers.admit`, through the `ports.Gate` port); every update is synchronous, so a reader
never sees half of one. An adapter: the in-memory side of `gate_credentials`, the one fake of
itself (unit tests fill it with `upsert`).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from ..domain import Admission, CredentialState, admits

_HEADER = struct.Struct("<BdIH")
_NO_DEADLINE = math.inf


class GateRow(NamedTuple):
    """One credential as the gate loads it: the columns of `gate_credentials` in this order
    (an asyncpg Record of the same columns is accepted as is)."""

    digest: bytes
    credential_id: str
    scanner_id: str
    org_id: str
    state: str  # active | rotating | replaced | revoked
    valid_until: datetime | None


class _Orgs:
    """Organisation ids by small index, each stored once."""

    __slots__ = ("index", "names")

    def __init__(self) -> None:
        self.names: list[str] = []
        self.index: dict[str, int] = {}

    def intern(self, org_id: str) -> int:
        found = self.index.get(org_id)
        if found is None:
            found = len(self.names)
            self.names.append(org_id)
            self.index[org_id] = found
        return found


class GateBuilder:
    """A fresh gate content, filled chunk by chunk and swapped in at once."""

    def __init__(self) -> None:
        self.entries: dict[bytes, bytes] = {}
        self.orgs = _Orgs()

    def add(self, rows: Iterable[Sequence[Any]]) -> None:
        _put(self.entries, self.orgs, rows)


_STATE_CODES = {state.label: int(state) for state in CredentialState}


def _put(entries: dict[bytes, bytes], orgs: _Orgs, rows: Iterable[Sequence[Any]]) -> int:
    """Pack each row (GateRow order) into `entries`. Hot at full load (a million rows): one
    pass, no objects, names bound locally, organisations interned inline, one join instead of
    two concatenations (about a quarter faster than the plain version, bench/README.md)."""
    count = 0
    pack = _HEADER.pack
    codes = _STATE_CODES
    index = orgs.index
    join = b"".join
    for digest, credential_id, scanner_id, org_id, state, valid_until in rows:
        scanner = scanner_id.encode()
        if len(digest) != 32 or len(scanner) > 0xFFFF:
            continue  # not a credential digest / not a scanner id the header can hold
        org = index.get(org_id)
        if org is None:
            org = orgs.intern(org_id)
        deadline = _NO_DEADLINE if valid_until is None else valid_until.timestamp()
        entries[digest if type(digest) is bytes else bytes(digest)] = join(
            (pack(codes[state], deadline, org, len(scanner)), scanner, credential_id.encode())
        )
        count += 1
    return count


class CredentialGate:
    def __init__(self) -> None:
        self._entries: dict[bytes, bytes] = {}
        self._orgs = _Orgs()
        self.loaded = False  # true once a full load completed

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, digest: bytes, now: float) -> Admission | None:
        """The credential with this SHA-256 digest and whether it admits an upload at `now`."""
        packed = self._entries.get(digest)
        if packed is None:
            return None
        state, deadline, org, scanner_length = _HEADER.unpack_from(packed)
        start = _HEADER.size
        middle = start + scanner_length
        return Admission(
            scanner_id=packed[start:middle].decode(),
            org_id=self._orgs.names[org],
            credential_id=packed[middle:].decode(),
            state=state,
            admitted=admits(state, deadline, now),
        )

    def replace_all(self, built: GateBuilder) -> None:
        """Swap in a complete new content (a full load)."""
        self._entries, self._orgs = built.entries, built.orgs
        self.loaded = True

    def upsert(self, rows: Iterable[Sequence[Any]]) -> int:
        """Add or update credentials (one scanner's rows after a notification)."""
        return _put(self._entries, self._orgs, rows)
