"""The annotation app: pages for people, the same operations as a JSON API under ``/api``, over the feedback store.

``create_app(backend, authenticate)`` builds it. ``authenticate`` is a FastAPI dependency returning the signed-in
user's name (the Airflow plugin passes one built on Airflow's auth manager); without it every route answers 503.
Every route — pages, API, schema, static files — then requires that user to be an expert on the roster (else 403),
and every write from a browser session to come from the app's own origin. The expert's identity is only ever the
authenticated user's name.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' ``Annotated`` dependencies at runtime, and
# they name closures of ``create_app``.

import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy.engine import Engine

from dctp_tasks.annotate import guard, models
from dctp_tasks.annotate.render import STATIC, environment
from dctp_tasks.config import AnnotationConfig, ExpertConfig, default_config_path, load_config
from dctp_tasks.feedback import consensus_db, db
from dctp_tasks.feedback.db import expert_reliability, merge_runs
from dctp_tasks.feedback.store import LABELS, FeedbackError, FeedbackStore, QueueItem

log = logging.getLogger(__name__)

CLIENT = "web"
"""The ``client`` of judgements made through the app (pages and API alike)."""
MAX_PAGE = 200
STATIC_FILES = {"annotate.js": "text/javascript", "annotate.css": "text/css"}


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

    def dispose(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None


@dataclass(frozen=True)
class Expert:
    """The signed-in user, found on the roster, and the store opened for them."""

    name: str
    roster: ExpertConfig
    store: FeedbackStore


def create_app(backend: Backend, authenticate: Callable[..., Any] | None, *,
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
        name = user if isinstance(user, str) else user.get_name()
        try:
            roster = store.expert(name)
        except FeedbackError as exc:
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                f"{name!r} is not an expert on the annotation roster (annotation.experts): only "
                                "experts may read or judge the queue") from exc
        return Expert(name, roster, store)

    def writing_expert(request: Request, expert: Annotated[Expert, Depends(current_expert)]) -> Expert:
        guard.check_same_origin(request, trusted)
        return expert

    ExpertDep = Annotated[Expert, Depends(current_expert)]
    WriterDep = Annotated[Expert, Depends(writing_expert)]

    app = FastAPI(title="DCTP annotation", version="1", openapi_url=None, docs_url=None, redoc_url=None,
                  dependencies=[Depends(current_expert)],
                  description="Judge the documents the pipeline is least sure of. Every route needs an Airflow "
                              "user on the expert roster: a bearer token (`POST /auth/token` of the API server) or "
                              "the Airflow UI's session cookie.")
    app.state.backend = backend

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        for name, value in guard.SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    def wants_json(request: Request) -> bool:
        return _relative(request).startswith("/api")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        if wants_json(request):
            return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)
        return HTMLResponse(pages.get_template("error.html").render(
            status=exc.status_code, detail=str(exc.detail), root=_root(request), airflow=_airflow_root(request)),
            exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return await http_error(request, HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail))

    @app.exception_handler(sa.exc.OperationalError)
    async def store_down(request: Request, exc: sa.exc.OperationalError):
        log.warning("feedback store unreachable: %s", exc)
        return await http_error(request, HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "the feedback store is unreachable right now; try again",
            headers={"Retry-After": "5"}))

    # -- pages -------------------------------------------------------------------------------------------------

    def render(request: Request, template: str, **context) -> HTMLResponse:
        return HTMLResponse(pages.get_template(template).render(root=_root(request), **context))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False, name="queue_page")
    def queue_page(request: Request, expert: ExpertDep) -> HTMLResponse:
        item = expert.store.next_item(expert.name)
        return render(request, "queue.html", expert=expert.name, item=item, progress=_progress(expert),
                      categories=expert.store.config.categories, scores=_score_rows(item) if item else [],
                      judge_request=uuid.uuid4().hex, undo_request=uuid.uuid4().hex, page="queue")

    @app.get("/queue", response_class=HTMLResponse, include_in_schema=False)
    def queue_list(request: Request, expert: ExpertDep, offset: Annotated[int, Query(ge=0)] = 0,
                   limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50) -> HTMLResponse:
        total = expert.store.open_count(expert.name)
        items = expert.store.open_queue(expert.name, limit=limit, offset=offset)
        return render(request, "list.html", expert=expert.name, items=items, total=total, offset=offset,
                      limit=limit, page="list")

    @app.post("/judge", include_in_schema=False)
    def judge_form(request: Request, expert: WriterDep, item_id: Annotated[int, Form()],
                   label: Annotated[str, Form()], request_id: Annotated[str, Form()],
                   category: Annotated[str, Form()] = "", rationale: Annotated[str, Form()] = "") -> Response:
        _judge(expert, models.JudgementIn(item_id=item_id, label=_label(label), category=category or None,
                                          rationale=rationale or None, request_id=request_id))
        return RedirectResponse(f"{_root(request)}/", status.HTTP_303_SEE_OTHER)

    @app.post("/undo", include_in_schema=False)
    def undo_form(request: Request, expert: WriterDep, request_id: Annotated[str, Form()]) -> Response:
        _undo(expert, request_id)
        return RedirectResponse(f"{_root(request)}/", status.HTTP_303_SEE_OTHER)

    @app.get("/documents/{doc_id:path}", response_class=HTMLResponse, include_in_schema=False)
    def document_page(request: Request, doc_id: str, expert: ExpertDep) -> HTMLResponse:
        document = _document(expert, doc_id)
        return render(request, "document.html", expert=expert.name, doc=document,
                      scores=_score_rows(document.item), page="document")

    @app.get("/batches", response_class=HTMLResponse, include_in_schema=False)
    def batches_page(request: Request, expert: ExpertDep, offset: Annotated[int, Query(ge=0)] = 0,
                     limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20) -> HTMLResponse:
        batch_page = _batches(expert, limit, offset)
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
                         progress=_progress(expert))

    @api.get("/next", response_model=models.NextItem, summary="The next item to judge, and progress")
    def next_item(expert: ExpertDep) -> models.NextItem:
        item = expert.store.next_item(expert.name)
        return models.NextItem(item=_item(item) if item else None, progress=_progress(expert))

    @api.get("/queue", response_model=models.QueuePage, summary="The expert's open items, soonest due first")
    def queue(expert: ExpertDep, offset: Annotated[int, Query(ge=0)] = 0,
              limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50) -> models.QueuePage:
        return models.QueuePage(total=expert.store.open_count(expert.name), limit=limit, offset=offset,
                                items=[_item(i) for i in expert.store.open_queue(expert.name, limit=limit,
                                                                                  offset=offset)])

    @api.post("/judgements", response_model=models.Judgement, status_code=status.HTTP_201_CREATED,
              summary="Judge an item (idempotent per request_id)")
    def judge(body: models.JudgementIn, expert: WriterDep) -> models.Judgement:
        return _judge(expert, body)

    @api.post("/undo", response_model=models.UndoOut, summary="Take back the expert's last judgement")
    def undo(body: models.UndoIn, expert: WriterDep) -> models.UndoOut:
        return models.UndoOut(retraction=_undo(expert, body.request_id))

    @api.get("/documents/{doc_id:path}", response_model=models.Document,
             summary="Every judgement of a document, its consensus and its history across versions")
    def document(doc_id: str, expert: ExpertDep) -> models.Document:
        return _document(expert, doc_id)

    @api.get("/batches", response_model=models.BatchPage, summary="Progress and agreement per batch and expert")
    def batches(expert: ExpertDep, offset: Annotated[int, Query(ge=0)] = 0,
                limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20) -> models.BatchPage:
        return _batches(expert, limit, offset)

    @api.get("/openapi.json", summary="This API's OpenAPI schema")
    def openapi(expert: ExpertDep) -> JSONResponse:
        return JSONResponse(app.openapi())

    app.include_router(api)
    return app


# -- operations shared by pages and API ------------------------------------------------------------------------

def _judge(expert: Expert, body: models.JudgementIn) -> models.Judgement:
    try:
        written = expert.store.submit(expert.name, body.item_id, body.label, category=body.category,
                                      rationale=body.rationale, client=CLIENT, request_id=body.request_id)
    except FeedbackError as exc:
        raise _refused(exc) from exc
    return models.Judgement(**asdict(written))


def _undo(expert: Expert, request_id: str) -> models.Judgement | None:
    try:
        written = expert.store.retract_last(expert.name, client=CLIENT, request_id=request_id)
    except FeedbackError as exc:
        raise _refused(exc) from exc
    return models.Judgement(**asdict(written)) if written else None


def _document(expert: Expert, doc_id: str) -> models.Document:
    try:
        history = expert.store.history(doc_id)
    except FeedbackError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    states = [models.ConsensusState(**{k: r[k] for k in models.ConsensusState.model_fields})
              for r in consensus_db.consensus_history(expert.store, history.item.item_id)]
    return models.Document(item=_item(history.item), assigned=history.assigned,
                           judgements=[models.Judgement(**asdict(j)) for j in history.trail],
                           effective={e: models.Judgement(**asdict(j)) for e, j in history.effective.items()},
                           consensus=states[-1] if states else None, history=states)


def _batches(expert: Expert, limit: int, offset: int) -> models.BatchPage:
    rows, total = expert.store.batch_progress(limit=limit, offset=offset)
    alpha, reliability = _agreement(expert.store, [r["dt"] for r in rows])
    out = []
    for row in rows:
        merge_id, batch_alpha = alpha.get(row["dt"], (None, None))
        out.append(models.Batch(
            batch_id=row["batch_id"], dt=row["dt"], items=row["items"], created_at=row["created_at"],
            table_version=row["table_version"], alpha=batch_alpha, merge_id=merge_id,
            experts={name: models.ExpertProgress(**counts, **reliability.get(name, {}))
                     for name, counts in sorted(row["experts"].items())}))
    return models.BatchPage(total=total, limit=limit, offset=offset, batches=out)


def _agreement(store: FeedbackStore, dts: list[str]) -> tuple[dict[str, tuple[int, float | None]], dict[str, dict]]:
    """Return each date's latest merge (id, Krippendorff's alpha of its batch) and, from the latest merge of all,
    each expert's reliability and agreement: the merge's numbers, where a merge has run."""
    if not dts:
        return {}, {}
    with store._reading() as conn:
        runs = conn.execute(sa.select(merge_runs.c.merge_id, merge_runs.c.dt, merge_runs.c.stats)
                            .where(merge_runs.c.dt.in_(dts)).order_by(merge_runs.c.merge_id)).all()
        latest = conn.execute(sa.select(sa.func.max(merge_runs.c.merge_id))).scalar()
        experts = conn.execute(sa.select(expert_reliability.c.expert, expert_reliability.c.reliability,
                                         expert_reliability.c.agreement)
                               .where(expert_reliability.c.merge_id == latest)).all() if latest else []
    alpha = {dt: (merge_id, _finite(json.loads(stats).get("alpha_batch"))) for merge_id, dt, stats in runs}
    return alpha, {e: {"reliability": _finite(r), "agreement": _finite(a)} for e, r, a in experts}


def _progress(expert: Expert) -> models.Progress:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    counts = expert.store.progress(expert.name, since=today)
    return models.Progress(open=counts["open"], assigned=counts["assigned"], done=counts["done"],
                           judged_today=counts["judged_since"])


def _item(item: QueueItem) -> models.Item:
    return models.Item(**{k: v for k, v in asdict(item).items() if k in models.Item.model_fields})


def _score_rows(item: QueueItem) -> list[tuple[str, str, Any]]:
    """The item's scores as (scorer, field, value) rows, for a table."""
    return [(scorer, name, value) for scorer, values in sorted(item.scores.items())
            for name, value in sorted((values if isinstance(values, dict) else {"value": values}).items())]


def _refused(exc: FeedbackError) -> HTTPException:
    message = str(exc)
    if "already used" in message:  # a request id reused for a different judgement
        return HTTPException(status.HTTP_409_CONFLICT, message)
    if "does not exist" in message:
        return HTTPException(status.HTTP_404_NOT_FOUND, message)
    if "may not judge" in message:
        return HTTPException(status.HTTP_403_FORBIDDEN, message)
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, message)


def _label(value: str) -> str:
    if value not in LABELS:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"label must be one of {', '.join(LABELS)}")
    return value


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and value == value and abs(value) != float("inf") \
        else None


def _root(request: Request) -> str:
    """The path the app is mounted at (``/dctp`` in the API server), for links."""
    return request.scope.get("root_path", "").rstrip("/")


def _airflow_root(request: Request) -> str:
    """The Airflow UI's path: the app's mount point without its last segment."""
    return _root(request).rsplit("/", 1)[0] + "/"


def _relative(request: Request) -> str:
    path = request.url.path
    root = _root(request)
    return path[len(root):] if root and path.startswith(root) else path
