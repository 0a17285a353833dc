"""`scanner-auth`: run the whole system on this machine, one service, or its migrations."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from .services import SERVICES

DESCRIPTION = """\
Scanner authorisation for MyScanner: admins generate a code, a scanner redeems it for its
own credential, and the ingest gateway accepts that scanner's scan data from then on.

commands:
  dev                  the whole system on this machine, no Docker: embedded PostgreSQL,
                       an embedded Kafka-protocol broker, an SMTP sink, the four services
                       and a demo directory; prints URLs and a JWT per demo user; Ctrl-C
                       stops everything
  serve SERVICE        one service configured from the environment (as Kubernetes runs it);
                       applies its migrations first unless MIGRATE_ON_START=false
  migrate SERVICE      apply that service's database migrations and exit
  mail                 list the mails the dev SMTP sink kept
  keys [SERVICE…]      new event-signing keys: EVENT_SIGNING_KEY per service and the
                       EVENT_TRUSTED_KEYS line trusting them (deploy/README.md)
  contracts [--check]  regenerate the AsyncAPI and OpenAPI documents in contracts/, or
                       (--check) exit 1 naming those that are out of date

services: token-issuer (8001), redeemer (8002), scan-ingest (8003), notifier (8004).
Configuration variables: see the README, section "Configuration".
"""


def _run(coro: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard] on Linux
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def _build(service: str) -> Any:
    from scanner_auth_shared.settings import ConfigurationError

    try:
        return SERVICES[service].build_from_environment()
    except ConfigurationError as exc:
        print(f"scanner-auth {service}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(args: argparse.Namespace) -> None:
    from scanner_auth_shared.logs import configure_logging
    from scanner_auth_shared.runtime import serve

    configure_logging(args.service, os.environ.get("LOG_LEVEL", "INFO"))
    runtime = _build(args.service)
    _run(serve(runtime))


def cmd_migrate(args: argparse.Namespace) -> None:
    from scanner_auth_shared.logs import configure_logging

    configure_logging(args.service, os.environ.get("LOG_LEVEL", "INFO"))
    runtime = _build(args.service)
    if runtime.database is None:
        print(f"{args.service} keeps no state: nothing to migrate")
        return
    _run(runtime.migrate())
    print(f"{args.service}: migrations applied")


def cmd_dev(args: argparse.Namespace) -> None:
    from .devstack import run_dev

    raise SystemExit(
        run_dev(Path(args.data_dir), smtp_port=args.smtp_port, quiet=args.quiet, kafka=args.kafka)
    )


def cmd_mail(args: argparse.Namespace) -> None:
    from .devstack import list_mail

    list_mail(Path(args.data_dir))


def cmd_keys(args: argparse.Namespace) -> None:
    from scanner_auth_shared.signing import EventSigner, new_private_key_text

    seeds = {name: new_private_key_text() for name in args.services}
    print("# EVENT_SIGNING_KEY of each service: secret, one per service (deploy/README.md)")
    for name, seed in seeds.items():
        print(f"{name}\t{seed}")
    print("# EVENT_TRUSTED_KEYS: public, the same for every service")
    trusted = ",".join(
        f"{name}={EventSigner.from_text(name, seed).public_key}" for name, seed in seeds.items()
    )
    print(f"EVENT_TRUSTED_KEYS={trusted}")


def cmd_contracts(args: argparse.Namespace) -> None:
    from .contracts import DEFAULT_DIR, main

    raise SystemExit(main(Path(args.dir) if args.dir else DEFAULT_DIR, check=args.check))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scanner-auth",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data_dir = os.environ.get("SCANNER_AUTH_DEV_DIR", ".dev")

    dev = sub.add_parser("dev", help="the whole system with embedded infrastructure")
    dev.add_argument(
        "--data-dir", default=data_dir, help="where logs, mails and data go (default: .dev)"
    )
    dev.add_argument("--smtp-port", type=int, default=0, help="SMTP sink port (default: any free)")
    dev.add_argument("--quiet", action="store_true", help="print only the essentials")
    dev.add_argument(
        "--kafka",
        choices=("tansu", "apache"),
        default="tansu",
        help="the broker: tansu (in memory, starts at once; the default) or apache (Apache "
        "Kafka from Maven Central's jars, as the tests run; needs Java 17)",
    )
    dev.set_defaults(func=cmd_dev)

    for name, func, text in (
        ("serve", cmd_serve, "run one service, configured from the environment"),
        ("migrate", cmd_migrate, "apply one service's migrations and exit"),
    ):
        s = sub.add_parser(name, help=text, description=text)
        s.add_argument("service", choices=sorted(SERVICES))
        s.set_defaults(func=func)

    keys = sub.add_parser(
        "keys",
        help="new event-signing keys: each service's EVENT_SIGNING_KEY and the EVENT_TRUSTED_KEYS "
        "line that trusts them",
    )
    keys.add_argument("services", nargs="*", default=sorted(SERVICES), metavar="SERVICE")
    keys.set_defaults(func=cmd_keys)

    mail = sub.add_parser("mail", help="list the mails the dev SMTP sink kept")
    mail.add_argument("--data-dir", default=data_dir)
    mail.set_defaults(func=cmd_mail)

    contracts = sub.add_parser(
        "contracts", help="regenerate the AsyncAPI and OpenAPI documents in contracts/"
    )
    contracts.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 naming stale documents"
    )
    contracts.add_argument("--dir", help="where they are (default: contracts/ of the repository)")
    contracts.set_defaults(func=cmd_contracts)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
