"""Exception handlers: a request that fails validation gets a 422 whose ``detail`` is one readable sentence.

FastAPI's default 422 body is a list of pydantic error objects; clients of this API
get ``"k: Input should be less than or equal to 100 (got '101')"`` instead, at most
five such clauses joined by ``"; "``.
"""
from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


def _where(loc) -> str:
    """The dotted name of the failing field, without the ``query``/``path``/``body``/``header`` prefix."""
    parts = [str(p) for p in loc if p not in ("query", "path", "body", "header")]
    return ".".join(parts) or "request"


def readable(err: dict) -> str:
    """One pydantic error as ``"<field>: <message>"``, quoting the rejected input when it is short and scalar."""
    where, msg = _where(err.get("loc", ())), err.get("msg", "invalid")
    got = err.get("input")
    if err.get("type") == "missing":
        return f"{where}: required"
    if got is not None and not isinstance(got, (dict, list)) and len(str(got)) <= 80:
        return f"{where}: {msg} (got {got!r})"
    return f"{where}: {msg}"


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    errs = exc.errors()
    return JSONResponse(status_code=422, content={"detail": "; ".join(readable(e) for e in errs[:5])})


EXCEPTION_HANDLERS = {RequestValidationError: invalid_request}
