"""HTTP API of the token-issuer (contract: token-issuer table). Thin: authenticate, parse,
call one use case (handlers.py), answer. The organisation always comes from the verified JWT.

Dependencies come from `app.state.services` (a `Services`, built by app.py); the domain's
refusals are answered as problems with the statuses below (`REFUSALS`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, FastAPI, Path, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response as StarletteResponse

from scanner_auth_shared.api import Problem, Refusal, refusals
from scanner_auth_shared.auth import InvalidToken, JwtVerifier, Principal

from . import domain, handlers, metrics
from .adapters.ports import UnitOfWork
from .domain import TokenView
from .handlers import Context

log = logging.getLogger("scanner_auth.token_issuer.api")

_bearer = HTTPBearer(auto_error=False, description="The user's JWT from MyScanner's identity")


class Authenticator:
    """Verifies the bearer JWT and remembers who was seen (for the users list)."""

    def __init__(
        self, verifier: JwtVerifier, unit_of_work: Callable[[], UnitOfWork], context: Context
    ) -> None:
        self.verifier = verifier
        self.unit_of_work = unit_of_work
        self.context = context

    async def authenticate(self, credentials: HTTPAuthorizationCredentials | None) -> Principal:
        if credentials is None or not credentials.credentials:
            metrics.AUTH_REFUSED.labels("missing").inc()
            raise Problem(401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"})
        try:
            principal = await self.verifier.verify(credentials.credentials)
        except InvalidToken as exc:
            metrics.AUTH_REFUSED.labels("invalid").inc()
            # InvalidToken messages name the failure kind only, never the token.
            log.info("bearer token refused", extra={"reason": str(exc)[:100]})
            raise Problem(
                401,
                "the bearer token is not valid",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            ) from None
        honoured = domain.honoured(principal, self.context.support_org_id)
        if honoured is not principal:
            metrics.SUPPORT_ROLE_IGNORED.inc()
            log.info("support role ignored: not the Loadscan organisation")
        await handlers.record_principal(self.unit_of_work(), self.context, honoured)
        return honoured


@dataclass(frozen=True)
class Services:
    """What the routes use, on `app.state.services` (app.py builds it)."""

    unit_of_work: Callable[[], UnitOfWork]  # a new unit of work for each use case
    context: Context
    authenticator: Authenticator


# The dependencies are `async def`: FastAPI runs a plain `def` one in its thread pool (a thread
# hop per request).


async def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def _caller(
    services: Annotated[Services, Depends(_services)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    return await services.authenticator.authenticate(credentials)


async def _unit_of_work(services: Annotated[Services, Depends(_services)]) -> UnitOfWork:
    return services.unit_of_work()


async def _context(services: Annotated[Services, Depends(_services)]) -> Context:
    return services.context


Caller = Annotated[Principal, Depends(_caller)]
Uow = Annotated[UnitOfWork, Depends(_unit_of_work)]
Ctx = Annotated[Context, Depends(_context)]
ScannerId = Annotated[str, Path(min_length=1, max_length=200, description="Scanner id")]

NO_STORE = {"Cache-Control": "no-store"}

REFUSALS: dict[type[Refusal], int] = {
    domain.ScannerNotFound: 404,
    domain.TokenNotFound: 404,
    domain.ManageForbidden: 403,
    domain.NoActiveToken: 409,
    domain.RecipientRefused: 422,
    domain.EmailRateLimited: 429,
}
_answer_refusal = refusals(REFUSALS)


async def _refused(request: Request, exc: Exception) -> StarletteResponse:
    """A domain refusal as its problem; the access policy's refusals are counted."""
    if isinstance(exc, domain.ScannerNotFound | domain.ManageForbidden):
        metrics.ACCESS_REFUSED.labels(str(REFUSALS[type(exc)])).inc()
    response: StarletteResponse = await _answer_refusal(request, exc)
    return response


def install(app: FastAPI, services: Services) -> None:
    app.state.services = services
    app.add_exception_handler(Refusal, _refused)


def _problems(*statuses: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI entries for the RFC 9457 problems a route may answer."""
    meaning = {
        401: "missing or invalid bearer token",
        403: "view-only caller",
        404: "no such scanner visible to the caller",
        409: "no active token",
        422: "malformed request or unsuitable recipient",
        429: "too many emails of this code (EMAIL_LIMIT_PER_CODE_PER_HOUR) or to this "
        "recipient (EMAIL_LIMIT_PER_RECIPIENT_PER_HOUR) in the last hour; `Retry-After` says "
        "in how many seconds one can be sent again",
    }
    documented: dict[int | str, dict[str, object]] = {
        s: {
            "description": meaning[s],
            "content": {"application/problem+json": {"schema": {"type": "object"}}},
        }
        for s in (401, *statuses)
    }
    if 429 in documented:
        documented[429]["headers"] = {
            "Retry-After": {
                "description": "Seconds until the quota has room again.",
                "schema": {"type": "integer", "minimum": 1},
            }
        }
    return documented


# ------------------------------------------------------------------------------------ bodies


class TokenOut(BaseModel):
    token_id: str
    scanner_id: str
    code: str | None = Field(description="XXXX-XXXX-XXXX while the token is active, else null")
    status: domain.TokenStatus
    issued_at: datetime
    issued_by: str
    expires_at: datetime
    redeemed_at: datetime | None

    @classmethod
    def of(cls, view: TokenView) -> TokenOut:
        return cls(
            token_id=view.token_id,
            scanner_id=view.scanner_id,
            code=view.code,
            status=view.status,
            issued_at=view.issued_at,
            issued_by=view.issued_by,
            expires_at=view.expires_at,
            redeemed_at=view.redeemed_at,
        )


class ScannerOut(BaseModel):
    scanner_id: str
    org_id: str
    name: str
    serial_number: str | None
    model: str
    token_status: domain.TokenStatus | None
    token_expires_at: datetime | None
    authorisation_status: domain.AuthorisationStatus
    authorised_at: datetime | None
    can_manage: bool


class UserOut(BaseModel):
    user_id: str
    display_name: str
    email: str


class AuthorisationOut(BaseModel):
    status: Literal["authorised", "unauthorised"]
    authorised_at: datetime | None
    credential_id: str | None
    serial_number: str | None


class EmailRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    recipient_user_id: str | None = Field(
        None, min_length=1, max_length=200, description="Defaults to the caller"
    )


class EmailAccepted(BaseModel):
    notification_id: str


# ------------------------------------------------------------------------------------ routes

router = APIRouter(prefix="/v1", tags=["scanners"])


@router.get("/scanners", response_model=list[ScannerOut], responses=_problems())
async def list_scanners(caller: Caller, uow: Uow, ctx: Ctx) -> list[ScannerOut]:
    """The scanners the caller can view, with token and authorisation status."""
    return [ScannerOut(**asdict(s)) for s in await handlers.list_scanners(uow, ctx, caller)]


@router.post(
    "/scanners/{scanner_id}/authorisation-token",
    status_code=201,
    response_model=TokenOut,
    responses=_problems(403, 404),
)
async def generate_token(
    scanner_id: ScannerId, caller: Caller, uow: Uow, ctx: Ctx, response: Response
) -> TokenOut:
    """Generate a new code (manage). Supersedes the active one."""
    response.headers.update(NO_STORE)
    command = handlers.GenerateToken(by=caller, scanner_id=scanner_id)
    return TokenOut.of(await handlers.generate_token(uow, ctx, command))


@router.get(
    "/scanners/{scanner_id}/authorisation-token", response_model=TokenOut, responses=_problems(404)
)
async def get_token(
    scanner_id: ScannerId, caller: Caller, uow: Uow, ctx: Ctx, response: Response
) -> TokenOut:
    """The latest token (view); its code only while active."""
    response.headers.update(NO_STORE)
    return TokenOut.of(await handlers.show_latest_token(uow, ctx, caller, scanner_id))


@router.delete(
    "/scanners/{scanner_id}/authorisation-token",
    status_code=204,
    response_class=Response,
    responses=_problems(403, 404),
)
async def revoke_token(scanner_id: ScannerId, caller: Caller, uow: Uow, ctx: Ctx) -> Response:
    """Revoke the active token (manage). 204 also when there is none."""
    await handlers.revoke_token(uow, ctx, handlers.RevokeToken(by=caller, scanner_id=scanner_id))
    return Response(status_code=204)


@router.post(
    "/scanners/{scanner_id}/authorisation-token/email",
    status_code=202,
    response_model=EmailAccepted,
    responses=_problems(403, 404, 409, 422, 429),
)
async def email_token(
    scanner_id: ScannerId,
    caller: Caller,
    uow: Uow,
    ctx: Ctx,
    body: Annotated[EmailRequest | None, Body()] = None,
) -> EmailAccepted:
    """Email the active code to oneself (view) or to another user who can view it (manage)."""
    recipient = body.recipient_user_id if body is not None else None
    command = handlers.EmailCode(by=caller, scanner_id=scanner_id, recipient_user_id=recipient)
    return EmailAccepted(notification_id=await handlers.email_code(uow, ctx, command))


@router.get(
    "/scanners/{scanner_id}/users", response_model=list[UserOut], responses=_problems(403, 404)
)
async def list_users(scanner_id: ScannerId, caller: Caller, uow: Uow, ctx: Ctx) -> list[UserOut]:
    """Users who can view the scanner (manage), to choose a recipient."""
    viewers = await handlers.list_viewers(uow, ctx, caller, scanner_id)
    return [UserOut(user_id=v.user_id, display_name=v.display_name, email=v.email) for v in viewers]


@router.get(
    "/scanners/{scanner_id}/authorisation",
    response_model=AuthorisationOut,
    responses=_problems(404),
)
async def get_authorisation(scanner_id: ScannerId, caller: Caller, uow: Uow) -> AuthorisationOut:
    """Whether the scanner is authorised (view)."""
    view = await handlers.show_authorisation(uow, caller, scanner_id)
    return AuthorisationOut(
        status=view.status,
        authorised_at=view.authorised_at,
        credential_id=view.credential_id,
        serial_number=view.serial_number,
    )


@router.delete(
    "/scanners/{scanner_id}/authorisation",
    status_code=204,
    response_class=Response,
    responses=_problems(403, 404),
)
async def deauthorise(scanner_id: ScannerId, caller: Caller, uow: Uow, ctx: Ctx) -> Response:
    """Deauthorise the scanner (manage): its credentials stop working."""
    await handlers.deauthorise(uow, ctx, handlers.Deauthorise(by=caller, scanner_id=scanner_id))
    return Response(status_code=204)
