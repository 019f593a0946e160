"""Client errors as JSON that names the problem: ``{"error": {"code", "message"}, "detail"}``."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipelines.integrity import DamagedChunk, DamagedData

#: validation problems listed in an error body; the rest are counted
MAX_LISTED_PROBLEMS = 5


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_body(code: str, message: str, **extra: object) -> dict:
    return {"error": {"code": code, "message": message, **extra}, "detail": message}


#: damaged archive data (a chunk or a product's metadata): the service's fault, and it lasts until
#: ``nowcast store check --repair`` and a re-ingest; every other product keeps answering
DAMAGED_STATUS = 503


def damaged_body(exc: DamagedData) -> dict:
    """The structured error for damaged data: never a forecast from it, never a plain-text 500."""
    extra: dict[str, object] = {"product": exc.product}
    if isinstance(exc, DamagedChunk):
        extra.update(time=exc.time, chunk=exc.key, reason=exc.reason)
    return error_body("damaged_data", str(exc), **extra)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(DamagedData)
    async def damaged(_: Request, exc: DamagedData) -> JSONResponse:
        return JSONResponse(damaged_body(exc), status_code=DAMAGED_STATUS)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # a 4 x 700 x 700 request of bad values has two million problems: name a few, count the rest
        errors = exc.errors()
        shown = errors[:MAX_LISTED_PROBLEMS]
        problems = [
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg', 'invalid')}"
            for e in shown
        ]
        if len(errors) > len(shown):
            problems.append(f"and {len(errors) - len(shown)} more problem(s)")
        fields = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))[:200]} for e in shown]
        return JSONResponse(error_body("invalid_request", "; ".join(problems)[:2000], fields=fields,
                                       n_problems=len(errors)), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(f"http_{exc.status_code}", str(exc.detail)), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))
