"""The routes besides chat completions: models, search, ask, documents, health.

``/api/search`` and ``/api/ask`` take and return the JSON of ``kb search --json`` and
``kb ask --json``. ``/healthz`` and ``/readyz`` need no key (for load balancers and probes);
``/readyz`` says which check failed, and its details (why the index does not open, what to set)
only to a caller with a valid key; the server log has them too.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from agent.api import documents
from agent.api.auth import is_writer, require_caller
from agent.api.backend import ModelCache
from agent.api.errors import ApiError, for_callers
from agent.api.runs import audit_sources, rag_run
from agent.api.schemas import MODELS, AskRequest, SearchRequest, model_json
from agent.rag.retrieval import search_json
from agent.usage.tokens import UNKNOWN

log = logging.getLogger("kb.api")
public = APIRouter()
private = APIRouter(dependencies=[Depends(require_caller)])


def _backend(request: Request) -> ModelCache:
    return request.app.state.backend


def _audit(request: Request, surface: str, sources: list[str]) -> None:
    """One audit row (caller, groups, surface, sources shown), written off the event loop."""
    import asyncio

    asyncio.get_running_loop().run_in_executor(
        None, audit_sources, _backend(request), request.state.caller, surface, request.state.groups, sources)


def _check_length(text: str, request: Request, param: str) -> str:
    limit = _backend(request).settings.api_max_question_chars
    text = text.strip()
    if not text:
        raise ApiError(400, f"'{param}' is empty", code="invalid_request", param=param)
    if len(text) > limit:
        raise ApiError(400, f"'{param}' is too long: {len(text)} characters (the limit is {limit}, "
                       "KB_API_MAX_QUESTION_CHARS)", code="question_too_long", param=param)
    return text


# ---------------------------------------------------------------- health


@public.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@public.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    backend = _backend(request)
    index_problem = await run_in_threadpool(backend.check_index)
    llm_problem = None if backend.settings.llm_configured else "not configured: set " + " and ".join(
        backend.settings.missing_llm_settings())
    if _has_valid_key(request):
        checks = {"settings": "ok", "index": for_callers(index_problem) if index_problem else "ok",
                  "llm": llm_problem or "ok"}
    else:  # a probe or a stranger: which check failed, not the server's paths or settings
        checks = {"settings": "ok", "index": "not ready" if index_problem else "ok",
                  "llm": "not configured" if llm_problem else "ok"}
    ready = index_problem is None and llm_problem is None
    if not ready:
        log.warning("not ready: %s", "; ".join(p for p in (index_problem, llm_problem and f"llm {llm_problem}") if p))
    return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks}, status_code=200 if ready else 503)


def _has_valid_key(request: Request) -> bool:
    callers = request.app.state.callers
    if not callers.enabled:
        return False  # an open server has no authenticated callers
    try:
        callers.identify(request.headers.get("authorization"))
    except ApiError:
        return False
    return True


# ---------------------------------------------------------------- models


@private.get("/v1/models")
async def list_models() -> dict[str, Any]:
    return {"object": "list", "data": [model_json(name) for name in MODELS]}


@private.get("/v1/models/{model}")
async def get_model(model: str) -> dict[str, Any]:
    if model not in MODELS:
        raise ApiError(404, f"unknown model '{model}': use one of {', '.join(MODELS)}", code="model_not_found", param="model")
    return model_json(model)


# ---------------------------------------------------------------- search and ask (kb search / kb ask --json)


@private.post("/api/search")
async def search(body: SearchRequest, request: Request) -> dict[str, Any]:
    backend = _backend(request)
    query = _check_length(body.query, request, "query")
    slot = request.app.state.gate.acquire()
    try:
        found = await backend.search(query, body.k or backend.settings.top_k, body.mode, groups=request.state.groups)
    finally:
        slot.release()
    _audit(request, "api/search", [str(d.metadata.get("source")) for d in found])
    return search_json(query, found, explain=body.explain, mode=body.mode or backend.search_mode)


@private.post("/api/ask")
async def ask(body: AskRequest, request: Request) -> dict[str, Any]:
    models = _backend(request)
    question = _check_length(body.question, request, "question")
    k = body.k or models.settings.top_k
    settings = models.settings
    slot = request.app.state.gate.acquire()
    if not settings.llm_configured:  # like kb ask: say what to set, still show the passages
        try:
            found = await models.search(question, k, body.mode, groups=request.state.groups)
        finally:
            slot.release()
        _audit(request, "api/ask", [str(d.metadata.get("source")) for d in found])
        missing = " and ".join(settings.missing_llm_settings())
        notice = f"no Databricks model configured: set {missing} to get answers; showing the retrieved passages instead"
        return {"question": question, "answer": None, "error": notice, "sources": [], "usage": dict(UNKNOWN),
                "passages": search_json(question, found, explain=body.explain)["results"]}
    try:
        run = rag_run(models, question=question, history=[], caller=request.state.caller, k=k, overrides={},
                      on_finished=slot.release, mode=body.mode, groups=request.state.groups, surface="api/ask")
    except BaseException:
        slot.release()
        raise
    try:
        answer = await run.collect()
    finally:
        run.close()
    return answer.to_json(explain=body.explain)


# ---------------------------------------------------------------- documents (the citation viewer)


@private.get("/api/documents")
async def list_documents(request: Request) -> dict[str, Any]:
    settings = _backend(request).settings
    found = await run_in_threadpool(documents.list_documents, settings, request.state.groups)
    writer = is_writer(request)
    return {"documents": found, "can_upload": writer, "upload_limit": documents.upload_limit(settings) if writer else None}


@private.post("/api/documents")
async def upload_document(request: Request) -> dict[str, Any]:
    """A writer adds one file (multipart, part ``file``): stored in the upload folder and indexed
    (``agent.api.documents.save_upload``); others get 403."""
    if not is_writer(request):
        raise ApiError(403, "only writers may add documents: ask for a key with the 'writer' group",
                       code="forbidden")
    settings = _backend(request).settings
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(400, "send the file as multipart/form-data in a part named 'file'", code="invalid_request")
    try:
        form = await request.form(max_files=1, max_fields=4)
    except Exception as exc:  # malformed multipart, too many parts (Starlette's MultiPartException / HTTPException)
        raise ApiError(400, f"the upload could not be read: {getattr(exc, 'detail', None) or 'malformed multipart body'}",
                       code="invalid_request") from None
    try:
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise ApiError(400, "no file: send it in a multipart part named 'file'", code="invalid_request", param="file")
        data = await upload.read(documents.upload_limit(settings) + 1)
        result = await run_in_threadpool(documents.save_upload, settings, upload.filename or "", data)
    finally:
        await form.close()
    _audit(request, "api/documents upload", [result["source"]])
    return result


@private.get("/api/documents/{source:path}")
async def get_document(source: str, request: Request) -> FileResponse:
    path, kind = await run_in_threadpool(documents.resolve, _backend(request).settings, source, request.state.groups)
    _audit(request, "api/documents", [source])
    return FileResponse(path, media_type=kind, headers=documents.headers_for(path, kind))
