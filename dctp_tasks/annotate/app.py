"""The annotation app: pages for people, the same operations as a JSON API under ``/api``, over the feedback store.

``create_app(backend, authenticate)`` builds it. ``authenticate`` is a FastAPI dependency returning the signed-in
user's name (the Airflow plugin passes one built on Airflow's auth manager); without it every route answers 503.
Every route — pages, API, schema, static files — then requires that user to be an expert on the roster (else 403),
and every write from a browser session to come from the app's own origin. The expert's identity is only ever the
authenticated user's name.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' ``Annotated`` dependencies at runtime, and
# they name closures of ``create_app``.

import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated

import pydantic
import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy.engine import Engine

from dctp_tasks.annotate import guard, models, operations
from dctp_tasks.annotate.operations import Expert
from dctp_tasks.annotate.render import STATIC, environment
from dctp_tasks.config import AnnotationConfig, default_config_path, load_config
from dctp_tasks.feedback import db
from dctp_tasks.feedback.store import LABELS, FeedbackError, FeedbackStore

log = logging.getLogger(__name__)

MAX_PAGE = 200
STATIC_FILES = {"annotate.js": "text/javascript", "annotate.css": "text/css"}
DocId = Annotated[str, Query(min_length=1, max_length=4096, description="The document's id, e.g. wiki/123")]
Offset = Annotated[int, Query(ge=0)]


class Backend:
    """The store behind the app: one engine, opened on first use and checked to be current; the roster and
    categories re-read from the config file whenever it changes (or fixed, when ``config`` is given)."""

    def __init__(self, engine_factory: Callable[[], Engine], config: AnnotationConfig | None = None,
                 config_path: Path | None = None) -> None:
        self._engine_factory = engine_factory
        self._fixed = config
        self._config_path = config_path
        self._engine: Engine | None = None
        self._loaded: tuple[tuple[str, int], AnnotationConfig] | None = None
        self._lock = threading.Lock()

    def store(self) -> FeedbackStore:
        with self._lock:
            if self._engine is None:
                engine = self._engine_factory()
                try:
                    db.check_current(engine)
                except BaseException:
                    engine.dispose()
                    raise
                self._engine = engine
            return FeedbackStore(self._engine, self._annotation(), check=False)

    def _annotation(self) -> AnnotationConfig:
        if self._fixed is not None:
            return self._fixed
        path = self._config_path or default_config_path()
        key = (str(path), path.stat().st_mtime_ns)
        if self._loaded is None or self._loaded[0] != key:
            self._loaded = (key, load_config(path).annotation)
        return self._loaded[1]


def create_app(backend: Backend, authenticate: Callable[..., str] | None, *,
               trusted_origins: Iterable[str] = ()) -> FastAPI:
    """Build the app over ``backend``; ``authenticate`` returns the user name of a request (or raises 401)."""
    auth = authenticate or guard.refuse_all()
    trusted = tuple(trusted_origins)
    pages = environment()

    def current_expert(user: Annotated[str, Depends(auth)]) -> Expert:
        try:
            store = backend.store()
        except db.SchemaOutdated as exc:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
        try:
            roster = store.expert(user)
        except FeedbackError as exc:
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                f"{user!r} is not an expert on the annotation roster (annotation.experts): only "
                                "experts may read or judge the queue") from exc
        return Expert(user, roster, store)

    def writing_expert(request: Request, expert: Annotated[Expert, Depends(current_expert)]) -> Expert:
        guard.check_same_origin(request, trusted)
        return expert

    ExpertDep = Annotated[Expert, Depends(current_expert)]
    WriterDep = Annotated[Expert, Depends(writing_expert)]
    Limit = Annotated[int, Query(ge=1, le=MAX_PAGE)]

    app = FastAPI(title="DCTP annotation", version="1", openapi_url=None, docs_url=None, redoc_url=None,
                  dependencies=[Depends(current_expert)],
                  description="Judge the documents the pipeline is least sure of. Every route needs an Airflow "
                              "user on the expert roster: a bearer token (`POST /auth/token` of the API server) or "
                              "the Airflow UI's session cookie.")

    @app.middleware("http")
    async def security_headers(request: Request, call_next) -> Response:
        response = await call_next(request)
        for name, value in guard.SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if _relative(request).startswith("/api"):
            return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)
        return HTMLResponse(pages.get_template("error.html").render(
            status=exc.status_code, detail=str(exc.detail), root=_root(request)), exc.status_code,
            headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return await http_error(request, HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail))

    @app.exception_handler(sa.exc.OperationalError)
    async def store_down(request: Request, exc: sa.exc.OperationalError) -> Response:
        # the driver's error class only: its message may quote the statement's parameters (texts, rationales)
        log.warning("feedback store did not answer: %s", type(exc.orig).__name__)
        return await http_error(request, HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "the feedback store did not answer (it may be restarting or busy): "
                                                 "try again", headers={"Retry-After": "5"}))

    # -- pages -------------------------------------------------------------------------------------------------

    def render(request: Request, template: str, **context) -> HTMLResponse:
        return HTMLResponse(pages.get_template(template).render(root=_root(request), **context))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def queue_page(request: Request, expert: ExpertDep) -> HTMLResponse:
        item = expert.store.next_item(expert.name)
        return render(request, "queue.html", expert=expert.name, item=item, progress=operations.progress(expert),
                      categories=expert.store.config.categories,
                      scores=operations.score_rows(item) if item else [],
                      judge_request=uuid.uuid4().hex, undo_request=uuid.uuid4().hex, page="queue")

    @app.get("/queue", response_class=HTMLResponse, include_in_schema=False)
    def queue_list(request: Request, expert: ExpertDep, offset: Offset = 0, limit: Limit = 50) -> HTMLResponse:
        return render(request, "list.html", expert=expert.name, total=expert.store.open_count(expert.name),
                      items=expert.store.open_queue(expert.name, limit=limit, offset=offset, brief=True),
                      offset=offset,
                      limit=limit, page="list")

    @app.post("/judge", include_in_schema=False)
    def judge_form(request: Request, expert: WriterDep, item_id: Annotated[int, Form()],
                   label: Annotated[str, Form()], request_id: Annotated[str, Form()],
                   category: Annotated[str, Form()] = "", rationale: Annotated[str, Form()] = "") -> Response:
        try:
            body = models.JudgementIn(item_id=item_id, label=label, category=category or None,
                                      rationale=rationale or None, request_id=request_id)
        except pydantic.ValidationError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from exc
        operations.judge(expert, body)
        return RedirectResponse(f"{_root(request)}/", status.HTTP_303_SEE_OTHER)

    @app.post("/undo", include_in_schema=False)
    def undo_form(request: Request, expert: WriterDep,
                  request_id: Annotated[str, Form(min_length=1, max_length=128)]) -> Response:
        operations.undo(expert, request_id)
        return RedirectResponse(f"{_root(request)}/", status.HTTP_303_SEE_OTHER)

    @app.get("/document", response_class=HTMLResponse, include_in_schema=False)
    def document_page(request: Request, doc_id: DocId, expert: ExpertDep) -> HTMLResponse:
        document = operations.document(expert, doc_id)
        return render(request, "document.html", expert=expert.name, doc=document,
                      scores=operations.score_rows(document.item), page="document")

    @app.get("/batches", response_class=HTMLResponse, include_in_schema=False)
    def batches_page(request: Request, expert: ExpertDep, offset: Offset = 0, limit: Limit = 20) -> HTMLResponse:
        batch_page = operations.batches(expert, limit, offset)
        return render(request, "batches.html", expert=expert.name, batches=batch_page.batches,
                      total=batch_page.total, offset=offset, limit=limit, labels=LABELS, page="batches")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str, expert: ExpertDep) -> FileResponse:
        if name not in STATIC_FILES:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such file")
        return FileResponse(STATIC / name, media_type=STATIC_FILES[name])

    # -- the JSON API ------------------------------------------------------------------------------------------

    api = APIRouter(prefix="/api", tags=["annotation"])

    @api.get("/me", response_model=models.Me, summary="The signed-in expert, their roster entry and progress")
    def me(expert: ExpertDep) -> models.Me:
        return models.Me(expert=expert.name, weight=expert.roster.weight, seniority=expert.roster.seniority,
                         domains=expert.roster.domains, categories=expert.store.config.categories,
                         progress=operations.progress(expert))

    @api.get("/next", response_model=models.NextItem, summary="The next item to judge, and progress")
    def next_item(expert: ExpertDep) -> models.NextItem:
        item = expert.store.next_item(expert.name)
        return models.NextItem(item=operations.item(item) if item else None, progress=operations.progress(expert))

    @api.get("/queue", response_model=models.QueuePage, summary="The expert's open items, soonest due first")
    def queue(expert: ExpertDep, offset: Offset = 0, limit: Limit = 50) -> models.QueuePage:
        return models.QueuePage(total=expert.store.open_count(expert.name), limit=limit, offset=offset,
                                items=[operations.item(i) for i in expert.store.open_queue(
                                    expert.name, limit=limit, offset=offset)])

    @api.post("/judgements", response_model=models.Judgement, status_code=status.HTTP_201_CREATED,
              summary="Judge an item (idempotent per request_id)")
    def judge(body: models.JudgementIn, expert: WriterDep) -> models.Judgement:
        return operations.judge(expert, body)

    @api.post("/undo", response_model=models.UndoOut, summary="Take back the expert's last judgement")
    def undo(body: models.UndoIn, expert: WriterDep) -> models.UndoOut:
        return models.UndoOut(retraction=operations.undo(expert, body.request_id))

    @api.get("/document", response_model=models.Document,
             summary="Every judgement of a document, its consensus and its history across versions")
    def document(doc_id: DocId, expert: ExpertDep) -> models.Document:
        return operations.document(expert, doc_id)

    @api.get("/batches", response_model=models.BatchPage, summary="Progress and agreement per batch and expert")
    def batches(expert: ExpertDep, offset: Offset = 0, limit: Limit = 20) -> models.BatchPage:
        return operations.batches(expert, limit, offset)

    @api.get("/openapi.json", summary="This API's OpenAPI schema")
    def openapi(expert: ExpertDep) -> JSONResponse:
        return JSONResponse(app.openapi())

    app.include_router(api)
    return app


def _root(request: Request) -> str:
    """The path the app is mounted at (``/dctp`` in the API server), for links."""
    return request.scope.get("root_path", "").rstrip("/")


def _relative(request: Request) -> str:
    path = request.url.path
    root = _root(request)
    return path[len(root):] if root and path.startswith(root) else path
