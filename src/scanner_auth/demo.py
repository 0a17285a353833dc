"""The demo directory of `scanner-auth dev`: what MyScanner's directory would publish."""

from __future__ import annotations

from dataclasses import dataclass

from scanner_auth_shared.events import (
    EventData,
    ScannerAccessGranted,
    ScannerRegistered,
    UserUpserted,
)


@dataclass(frozen=True)
class DemoUser:
    label: str
    env_name: str
    user_id: str
    org_id: str
    email: str
    display_name: str
    roles: tuple[str, ...] = ()


@dataclass(frozen=True)
class DemoScanner:
    scanner_id: str
    org_id: str
    serial_number: str
    name: str
    model: str


class DemoDirectory:
    org = "org-quarry"
    other_org = "org-harbour"

    users = (
        DemoUser(
            "organisation admin",
            "ADMIN_JWT",
            "u-alice",
            "org-quarry",
            "alice@quarry.example",
            "Alice Admin",
            ("admin",),
        ),
        DemoUser(
            "user with access to one scanner",
            "USER_JWT",
            "u-bob",
            "org-quarry",
            "bob@quarry.example",
            "Bob Operator",
        ),
        DemoUser(
            "Loadscan support",
            "SUPPORT_JWT",
            "u-sam",
            "org-loadscan",
            "sam@loadscan.example",
            "Sam Support",
            ("support",),
        ),
        DemoUser(
            "admin of another organisation",
            "OTHER_ADMIN_JWT",
            "u-olga",
            "org-harbour",
            "olga@harbour.example",
            "Olga Other",
            ("admin",),
        ),
    )
    scanners = (
        DemoScanner("sc-quarry-1", "org-quarry", "LVS-10001", "Quarry gate", "LVS"),
        DemoScanner("sc-quarry-2", "org-quarry", "MPS-20002", "Stockpile east", "MPS"),
        DemoScanner("sc-quarry-3", "org-quarry", "LVS-10003", "Weighbridge", "LVS"),
        DemoScanner("sc-harbour-1", "org-harbour", "LVS-30001", "Harbour loader", "LVS"),
    )
    grants = (("sc-quarry-1", "u-bob"),)

    def events(self) -> list[EventData]:
        out: list[EventData] = [
            UserUpserted(
                user_id=u.user_id, org_id=u.org_id, email=u.email, display_name=u.display_name
            )
            for u in self.users
        ]
        out += [
            ScannerRegistered(
                scanner_id=s.scanner_id,
                org_id=s.org_id,
                serial_number=s.serial_number,
                name=s.name,
                model=s.model,
            )
            for s in self.scanners
        ]
        out += [ScannerAccessGranted(scanner_id=s, user_id=u) for s, u in self.grants]
        return out
