"""Redeeming a code, use case by use case, on the memory fakes: the credential and its event,
every refusal in the contract's order, typos and malformed codes, and the throttle."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest

from redeemer import domain, handlers
from redeemer.adapters.memory import MemoryTokens, MemoryUnitOfWork
from redeemer.domain import CodeRefused, MalformedRequest, RateLimited, ThrottlePolicy, TypoInCode
from redeemer.handlers import Config
from scanner_auth_shared.crypto import generate_code, looks_like_credential
from scanner_auth_shared.events import AuthorisationRejected, ScannerAuthorised

from .conftest import CLIENT_IP, ORG, PEPPER, World

pytestmark = pytest.mark.unit

# Throttling has tests of its own below; elsewhere it must not get in the way.
NO_THROTTLE = Config(
    pepper=PEPPER,
    throttle=ThrottlePolicy(10_000, timedelta(minutes=15), 10_000, timedelta(hours=1)),
)


def _typo(code: str) -> str:
    return code[:-1] + ("0" if code[-1] != "0" else "1")


async def test_a_code_is_redeemed_for_a_credential_and_a_scanner_authorised_event(world: World):
    await world.register("sc-1", "LVS-0001")
    issued = await world.issue("sc-1")
    # Entry is forgiving: lower case, spaces instead of dashes, O for 0 and L for 1.
    typed = issued.code.lower().replace("-", " ").replace("0", "o").replace("1", "l")

    authorised = await world.redeem(typed, "LVS-0001")

    assert authorised.scanner_id == "sc-1"
    assert looks_like_credential(authorised.credential)
    assert authorised.authorised_at == world.store.clock
    digest = hashlib.sha256(authorised.credential.encode()).hexdigest()
    [stored] = world.store.credentials.values()
    assert (stored.credential_id, stored.credential_digest, stored.status, stored.token_id) == (
        authorised.credential_id,
        digest,
        "active",
        issued.token_id,
    )
    assert world.store.tokens[issued.token_id].status == "redeemed"
    [event] = world.store.events(ScannerAuthorised)
    assert (event.source, event.subject) == ("scanner-auth/redeemer", "sc-1")
    assert world.store.published[-1].key == "sc-1"
    assert ScannerAuthorised.model_validate(event.data) == ScannerAuthorised(
        scanner_id="sc-1",
        org_id=ORG,
        token_id=issued.token_id,
        serial_number="LVS-0001",
        credential_id=authorised.credential_id,
        credential_digest=digest,
        authorised_at=authorised.authorised_at,
    )
    assert world.store.events(AuthorisationRejected) == []


async def test_serial_numbers_match_trimmed_and_case_insensitively(world: World):
    await world.register("sc-1", " LVS-0001")
    issued = await world.issue("sc-1")
    authorised = await world.redeem(issued.code, "lvs-0001")
    assert authorised.scanner_id == "sc-1"
    # The event carries the serial number as presented.
    assert world.store.data(ScannerAuthorised)[0].serial_number == "lvs-0001"


async def test_every_refusal_reason_in_the_contracts_order():
    world = World(NO_THROTTLE)
    for n in range(1, 8):
        await world.register(f"sc-{n}", f"LVS-000{n}")
    wrong_serial = await world.issue("sc-1")
    expired = await world.issue("sc-3", ttl=60)  # no TokenExpired: judged by the clock alone
    superseded = await world.issue("sc-4")
    await world.revoke(superseded, reason="superseded")
    used = await world.issue("sc-5")
    await world.redeem(used.code, "LVS-0005")
    gone = await world.issue("sc-6")
    await world.remove("sc-6")
    stranger = await world.issue("sc-unknown")
    # Revoked, then past its expiry: revoked comes first. Used, then past its expiry: used.
    revoked_and_expired = await world.issue("sc-7", ttl=60)
    await world.revoke(revoked_and_expired)
    used_and_expired = await world.issue("sc-2", ttl=60)
    await world.redeem(used_and_expired.code, "LVS-0002")
    world.store.advance(60)

    attempts = [
        ("invalid_code", generate_code(), "LVS-0009", "LVS-0009"),  # no token: keyed by serial
        ("revoked", superseded.code, "LVS-0004", "sc-4"),
        ("revoked", revoked_and_expired.code, "LVS-0007", "sc-7"),
        ("already_used", used.code, "LVS-0005", "sc-5"),
        ("already_used", used_and_expired.code, "LVS-0002", "sc-2"),
        ("expired", expired.code, "LVS-0003", "sc-3"),
        ("expired", expired.code, "LVS-0001", "sc-3"),  # expired before the serial's check
        ("serial_mismatch", wrong_serial.code, "LVS-0002", "sc-1"),  # the token's scanner
        ("serial_mismatch", gone.code, "LVS-0006", "sc-6"),  # removed from the directory
        ("serial_mismatch", stranger.code, "LVS-0007", "sc-unknown"),  # never in it
    ]
    for reason, code, serial, _ in attempts:
        refused = await world.refused(code, serial)
        assert isinstance(refused, CodeRefused) and refused.reason == reason, reason
        # Every refusal says the same; only the event says why.
        assert str(refused) == domain.CODE_NOT_ACCEPTED and refused.headers is None
    assert world.rejections() == [
        (reason, key, serial, CLIENT_IP) for reason, _, serial, key in attempts
    ]
    # Refusals change nothing: the wrong serial did not burn sc-1's code.
    assert (await world.redeem(wrong_serial.code, "LVS-0001")).scanner_id == "sc-1"
    assert world.store.tokens[expired.token_id].status == "active"  # only judged expired


async def test_a_refused_attempt_commits_its_count_and_its_event(world: World):
    commits = world.store.commits
    await world.refused(generate_code(), "LVS-0001")
    assert world.store.commits == commits + 1
    assert world.store.serials[domain.serial_key("LVS-0001")][0].failures == 1
    assert len(world.store.addresses[CLIENT_IP][0].failures) == 1
    assert [r[0] for r in world.rejections()] == ["invalid_code"]


async def test_a_typo_and_a_malformed_code_are_told_apart_and_never_count(world: World):
    await world.register("sc-1", "LVS-0001")
    issued = await world.issue("sc-1")
    for _ in range(12):  # more than any lockout threshold: typos are not attempts
        typo = await world.refused(_typo(issued.code), "LVS-0001")
        assert isinstance(typo, TypoInCode) and "typo" in str(typo)
    for malformed_code in ("SECRET-CODE", "", "YD20-66YF-H25", "YD20-66YF-H2555", "UUUU-UUUU-UUUU"):
        malformed = await world.refused(malformed_code, "LVS-0001")
        assert type(malformed) is MalformedRequest, malformed_code
        assert "malformed" in str(malformed) and "SECRET" not in str(malformed)
    assert world.store.events() == [] and world.store.serials == {} and world.store.addresses == {}
    assert (await world.redeem(issued.code, "LVS-0001")).scanner_id == "sc-1"


async def test_a_redemption_that_lost_a_race_says_why_from_a_fresh_read(world: World):
    """Between the lookup and the single conditional UPDATE, a revocation landed (another
    transaction): the UPDATE finds no active token, and the reason is read again."""
    await world.register("sc-1", "LVS-0001")
    issued = await world.issue("sc-1")

    class RevokedMeanwhile(MemoryTokens):
        async def mark_redeemed(self, token_id: str) -> bool:
            self.store.tokens[token_id].status = "revoked"
            return await super().mark_redeemed(token_id)

    uow = MemoryUnitOfWork(world.store, source="scanner-auth/redeemer")
    uow.tokens = RevokedMeanwhile(world.store)
    with pytest.raises(CodeRefused) as caught:
        await handlers.redeem_code(uow, world.config, issued.code, "LVS-0001", CLIENT_IP)
    assert caught.value.reason == "revoked"
    assert world.store.credentials == {}
    assert [r[0] for r in world.rejections()] == ["revoked"]


async def test_a_failure_half_way_leaves_nothing_behind(world: World):
    await world.register("sc-1", "LVS-0001")
    issued = await world.issue("sc-1")
    before = world.store.commits

    class Outage(Exception):
        pass

    uow = world.uow()

    async def database_gone(*_: object) -> None:
        raise Outage()

    uow.credentials.add = database_gone  # type: ignore[method-assign]
    with pytest.raises(Outage):
        await handlers.redeem_code(uow, world.config, issued.code, "LVS-0001", CLIENT_IP)
    assert world.store.commits == before
    assert world.store.tokens[issued.token_id].status == "active"
    assert world.store.credentials == {} and world.store.events(ScannerAuthorised) == []
    assert (await world.redeem(issued.code, "LVS-0001")).scanner_id == "sc-1"


async def test_a_credential_issued_after_a_deauthorisation_from_a_clock_ahead_is_alive(
    world: World,
):
    await world.register("sc-1", "LVS-0001")
    ahead = world.store.clock + timedelta(minutes=1)  # the token-issuer's clock runs ahead
    await world.deauthorise("sc-1", at=ahead)
    authorised = await world.authorised()
    # Stamped by our own clock: nothing compares it with the token-issuer's any more.
    assert authorised.authorised_at == world.store.clock
    assert await world.standing(authorised.credential) == "current"


# ------------------------------------------------------------------------------------ throttle


async def test_five_consecutive_failures_lock_the_serial_even_for_the_right_code(world: World):
    await world.register("sc-1", "LVS-0001")
    issued = await world.issue("sc-1")
    for _ in range(5):
        assert isinstance(await world.refused(generate_code(), "LVS-0001"), CodeRefused)

    locked = await world.refused(issued.code, "LVS-0001")
    assert isinstance(locked, RateLimited) and locked.retry_after == 900
    assert locked.headers == {"Retry-After": "900"}
    # The same serial number in other clothes, and from another address, is locked too.
    assert isinstance(await world.refused(issued.code, " lvs-0001", "198.51.100.1"), RateLimited)
    # Another serial number is not.
    assert isinstance(await world.refused(generate_code(), "LVS-0002"), CodeRefused)
    # Rate limited attempts are keyed by the serial as presented: nothing was looked up.
    assert world.rejections()[-3:-1] == [
        ("rate_limited", "LVS-0001", "LVS-0001", CLIENT_IP),
        ("rate_limited", " lvs-0001", " lvs-0001", "198.51.100.1"),
    ]
    assert world.store.tokens[issued.token_id].status == "active"

    # Knocking does not prolong the lock; once it passes, the right code works.
    world.store.advance(899)
    assert (await world.refused(issued.code, "LVS-0001")).headers == {"Retry-After": "1"}
    world.store.advance(1)
    assert (await world.redeem(issued.code, "LVS-0001")).scanner_id == "sc-1"


async def test_a_flood_against_a_lock_writes_two_events_per_key_and_period_not_one_each(
    world: World,
):
    """Issue #18: every refusal while locked out wrote an event (an outbox row, a public event);
    now the first is reported at once and the rest together, at the next report."""
    await world.register("sc-1", "LVS-0001")
    issued = await world.issue("sc-1")
    for _ in range(5):
        await world.refused(generate_code(), "LVS-0001")
    written = len(world.rejections())
    for _ in range(200):
        assert isinstance(await world.refused(issued.code, "LVS-0001"), RateLimited)
        world.store.advance(0.01)
    await world.refused(issued.code, "LVS-0001", "198.51.100.7")  # another address: another key
    assert [r[0] for r in world.rejections()[written:]] == ["rate_limited", "rate_limited"]

    assert await handlers.report_refusals_while_locked(world.uow(), world.config) == 1
    [*_, reported] = world.store.data(AuthorisationRejected)
    assert (reported.reason, reported.serial_number, reported.client_ip) == (
        "rate_limited", "LVS-0001", CLIENT_IP,
    )  # fmt: skip
    assert reported.attempts == 199
    assert reported.rejected_at == world.store.clock - timedelta(seconds=0.01)
    # Reported: the next refusal of that key is reported at once again.
    before = len(world.rejections())
    await world.refused(issued.code, "LVS-0001")
    assert len(world.rejections()) == before + 1
    assert await handlers.report_refusals_while_locked(world.uow(), world.config) == 0


async def test_a_failed_report_keeps_its_counts_for_the_next(world: World):
    await world.register("sc-1", "LVS-0001")
    for _ in range(5):
        await world.refused(generate_code(), "LVS-0001")
    for _ in range(3):
        await world.refused(generate_code(), "LVS-0001")

    class Broken(Exception):
        pass

    uow = world.uow()

    def broken_emit(*args: object, **kwargs: object) -> None:
        raise Broken

    uow.emit = broken_emit  # type: ignore[method-assign]
    with pytest.raises(Broken):
        await handlers.report_refusals_while_locked(uow, world.config)
    assert await handlers.report_refusals_while_locked(world.uow(), world.config) == 1
    assert world.store.data(AuthorisationRejected)[-1].attempts == 2


async def test_a_success_resets_the_serials_consecutive_count(world: World):
    await world.register("sc-1", "LVS-0001")
    first = await world.issue("sc-1")
    for _ in range(4):
        await world.refused(generate_code(), "LVS-0001")
    for _ in range(3):
        await world.refused(_typo(first.code), "LVS-0001")  # typos do not count
    await world.redeem(first.code, "LVS-0001")
    assert domain.serial_key("LVS-0001") not in world.store.serials
    for _ in range(4):
        assert isinstance(await world.refused(generate_code(), "LVS-0001"), CodeRefused)
    second = await world.issue("sc-1")
    assert (await world.redeem(second.code, "LVS-0001")).scanner_id == "sc-1"


async def test_thirty_failures_from_one_address_within_an_hour_lock_it(world: World):
    await world.register("sc-1", "LVS-0001")
    issued = await world.issue("sc-1")
    for n in range(30):  # a different serial number each time: no serial lock
        assert isinstance(await world.refused(generate_code(), f"GUESS-{n}"), CodeRefused), n
        world.store.advance(1)
    locked = await world.refused(issued.code, "LVS-0001")
    assert isinstance(locked, RateLimited) and locked.retry_after == 3600 - 1
    # Another address is not locked, and the code is still good there.
    assert (await world.redeem(issued.code, "LVS-0001", "198.51.100.1")).scanner_id == "sc-1"
    assert [r for r in world.rejections() if r[0] == "rate_limited"] == [
        ("rate_limited", "LVS-0001", "LVS-0001", CLIENT_IP)
    ]


async def test_the_address_window_slides(world: World):
    world.config = Config(
        pepper=PEPPER,
        throttle=ThrottlePolicy(
            serial_failures=100, address_failures=3, address_window=timedelta(seconds=60)
        ),
    )
    for n in range(2):
        await world.refused(generate_code(), f"A-{n}")
    world.store.advance(61)  # those two are out of the window now
    for n in range(2):
        assert isinstance(await world.refused(generate_code(), f"B-{n}"), CodeRefused)
    world.store.advance(30)
    assert isinstance(await world.refused(generate_code(), "C-0"), CodeRefused)  # 3rd: locks
    locked = await world.refused(generate_code(), "C-1")
    assert isinstance(locked, RateLimited) and locked.retry_after == 60
    world.store.advance(60)
    assert isinstance(await world.refused(generate_code(), "C-2"), CodeRefused)


async def test_ipv6_clients_count_per_64(world: World):
    world.config = Config(pepper=PEPPER, throttle=ThrottlePolicy(address_failures=2))
    await world.refused(generate_code(), "S-1", "2001:db8:1:2::1")
    await world.refused(generate_code(), "S-2", "2001:db8:1:2:ffff:ffff:ffff:fffe")  # locks
    assert isinstance(await world.refused(generate_code(), "S-3", "2001:db8:1:2::9"), RateLimited)
    other_64 = await world.refused(generate_code(), "S-4", "2001:db8:1:3::1")
    assert isinstance(other_64, CodeRefused)
    # The event keeps the address itself.
    assert [r[3] for r in world.rejections()][:2] == [
        "2001:db8:1:2::1",
        "2001:db8:1:2:ffff:ffff:ffff:fffe",
    ]


async def test_retry_after_is_the_longer_of_both_locks(world: World):
    world.config = Config(
        pepper=PEPPER,
        throttle=ThrottlePolicy(
            serial_failures=2,
            serial_lock=timedelta(seconds=100),
            address_failures=3,
            address_window=timedelta(seconds=500),
        ),
    )
    await world.refused(generate_code(), "LVS-0001")
    await world.refused(generate_code(), "LVS-0001")  # the serial locks for 100 s
    await world.refused(generate_code(), "LVS-0002")  # the address locks for 500 s
    world.store.advance(0.5)
    locked = await world.refused(generate_code(), "LVS-0001")
    assert isinstance(locked, RateLimited) and locked.retry_after == 500  # whole seconds, up
