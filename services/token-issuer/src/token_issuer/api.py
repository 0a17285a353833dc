"""HTTP API of the token-issuer (contract: token-issuer table). Thin: authenticate, parse,
call a use case, answer. The organisation always comes from the verified JWT."""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, FastAPI, Path, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response as StarletteResponse

from scanner_auth_shared.api import Problem, problem
from scanner_auth_shared.auth import InvalidToken, JwtVerifier, Principal

from . import domain, metrics
from .handlers import TokenIssuer, TokenView

log = logging.getLogger("scanner_auth.token_issuer.api")

_bearer = HTTPBearer(auto_error=False, description="The user's JWT from MyScanner's identity")


class Authenticator:
    """Verifies the bearer JWT and remembers who was seen (for the users list)."""

    def __init__(self, verifier: JwtVerifier, issuer: TokenIssuer) -> None:
        self.verifier = verifier
        self.issuer = issuer

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
        await self.issuer.record_principal(principal)
        return principal


async def _caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    authenticator: Authenticator = request.app.state.authenticator
    return await authenticator.authenticate(credentials)


async def _service(request: Request) -> TokenIssuer:
    # async: FastAPI runs a plain `def` dependency in its thread pool (a thread hop per request).
    service: TokenIssuer = request.app.state.token_issuer
    return service


Caller = Annotated[Principal, Depends(_caller)]
Service = Annotated[TokenIssuer, Depends(_service)]
ScannerId = Annotated[str, Path(min_length=1, max_length=200, description="Scanner id")]

NO_STORE = {"Cache-Control": "no-store"}


def _problems(*statuses: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI entries for the RFC 9457 problems a route may answer."""
    meaning = {
        401: "missing or invalid bearer token",
        403: "view-only caller",
        404: "no such scanner visible to the caller",
        409: "no active token",
        422: "malformed request or unsuitable recipient",
    }
    return {
        s: {
            "description": meaning[s],
            "content": {"application/problem+json": {"schema": {"type": "object"}}},
        }
        for s in (401, *statuses)
    }


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

_STATUSES = {
    domain.ScannerNotFound: 404,
    domain.TokenNotFound: 404,
    domain.ManageForbidden: 403,
    domain.NoActiveToken: 409,
    domain.RecipientRefused: 422,
}


async def _domain_error(_: Request, exc: Exception) -> StarletteResponse:
    assert isinstance(exc, domain.DomainError)
    status = next((s for cls, s in _STATUSES.items() if isinstance(exc, cls)), 400)
    return problem(status, str(exc))


def install(app: FastAPI, *, issuer: TokenIssuer, authenticator: Authenticator) -> None:
    app.state.token_issuer = issuer
    app.state.authenticator = authenticator
    app.add_exception_handler(domain.DomainError, _domain_error)


@router.get("/scanners", response_model=list[ScannerOut], responses=_problems())
async def list_scanners(caller: Caller, service: Service) -> list[ScannerOut]:
    """The scanners the caller can view, with token and authorisation status."""
    return [ScannerOut(**asdict(s)) for s in await service.list_scanners(caller)]


@router.post(
    "/scanners/{scanner_id}/authorisation-token",
    status_code=201,
    response_model=TokenOut,
    responses=_problems(403, 404),
)
async def generate_token(
    scanner_id: ScannerId, caller: Caller, service: Service, response: Response
) -> TokenOut:
    """Generate a new code (manage). Supersedes the active one."""
    response.headers.update(NO_STORE)
    return TokenOut.of(await service.generate(caller, scanner_id))


@router.get(
    "/scanners/{scanner_id}/authorisation-token", response_model=TokenOut, responses=_problems(404)
)
async def get_token(
    scanner_id: ScannerId, caller: Caller, service: Service, response: Response
) -> TokenOut:
    """The latest token (view); its code only while active."""
    response.headers.update(NO_STORE)
    return TokenOut.of(await service.latest_token(caller, scanner_id))


@router.delete(
    "/scanners/{scanner_id}/authorisation-token",
    status_code=204,
    response_class=Response,
    responses=_problems(403, 404),
)
async def revoke_token(scanner_id: ScannerId, caller: Caller, service: Service) -> Response:
    """Revoke the active token (manage). 204 also when there is none."""
    await service.revoke(caller, scanner_id)
    return Response(status_code=204)


@router.post(
    "/scanners/{scanner_id}/authorisation-token/email",
    status_code=202,
    response_model=EmailAccepted,
    responses=_problems(403, 404, 409, 422),
)
async def email_token(
    scanner_id: ScannerId,
    caller: Caller,
    service: Service,
    body: Annotated[EmailRequest | None, Body()] = None,
) -> EmailAccepted:
    """Email the active code to oneself (view) or to another user who can view it (manage)."""
    recipient = body.recipient_user_id if body is not None else None
    return EmailAccepted(notification_id=await service.email_code(caller, scanner_id, recipient))


@router.get(
    "/scanners/{scanner_id}/users", response_model=list[UserOut], responses=_problems(403, 404)
)
async def list_users(scanner_id: ScannerId, caller: Caller, service: Service) -> list[UserOut]:
    """Users who can view the scanner (manage), to choose a recipient."""
    return [
        UserOut(user_id=v.user_id, display_name=v.display_name, email=v.email)
        for v in await service.viewers(caller, scanner_id)
    ]


@router.get(
    "/scanners/{scanner_id}/authorisation",
    response_model=AuthorisationOut,
    responses=_problems(404),
)
async def get_authorisation(
    scanner_id: ScannerId, caller: Caller, service: Service
) -> AuthorisationOut:
    """Whether the scanner is authorised (view)."""
    view = await service.authorisation(caller, scanner_id)
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
async def deauthorise(scanner_id: ScannerId, caller: Caller, service: Service) -> Response:
    """Deauthorise the scanner (manage): its credentials stop working."""
    await service.deauthorise(caller, scanner_id)
    return Response(status_code=204)
