"""The FastAPI application: `create_app()` builds it; the lifespan loads and verifies the model.

Importing this module does no I/O: `app` is built without reading settings or the model,
which happens when the server starts the lifespan. Run it with `dscnet serve` or
`uvicorn app.main:app`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from app.api import explain, health, predict, v2, web
from app.admission import install_admission_control
from app.api.deps import ServiceState
from app.batching import start_batcher
from app.classifier import ModelLoadError, load_classifier
from app.errors import install_error_handlers
from app.memory import tune_malloc
from app.metrics import Metrics
from app.middleware import RequestContextMiddleware
from app.security import AccessConfigError, install_access_control, load_access_policy
from app.settings import Settings, describe_settings_error, get_settings

logger = logging.getLogger("dscnet.service")

DESCRIPTION = """
Classifies 224x224-resized blood-smear images into four B-lineage subtypes: `benign`
(haematogones), `early_pre_b`, `pre_b`, `pro_b`. **For research and decision support, not a
stand-alone diagnosis.** Errors share one body: `{"error": {"status", "code", "field",
"detail"}, "request_id"}`.
"""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ServiceState = app.state.service
    try:
        settings = state.settings or get_settings()
    except ValidationError as err:
        state.load_error = describe_settings_error(err)
        logger.error("invalid settings; refusing to start", extra={"fields": {"reason": state.load_error}})
        raise
    state.settings = settings
    try:
        state.access = load_access_policy(settings)
    except AccessConfigError as err:
        state.load_error = str(err)
        logger.error("API keys not loaded; refusing to start", extra={"fields": {"reason": str(err)}})
        raise
    state.not_ready_reason = "the model is loading"
    malloc = tune_malloc()  # before the model and the request threads allocate: flat RSS
    try:
        classifier = await run_in_threadpool(
            load_classifier,
            settings.model_path,
            settings.card_path,
            settings.intra_op_threads,
            settings.runs,
            settings.wide_threads,
        )
    except ModelLoadError as err:
        state.load_error = f"the model could not be loaded: {err}"
        state.not_ready_reason = f"the model could not be loaded: {err}"
        logger.error("model not loaded; refusing to start", extra={"fields": {"reason": str(err)}})
        raise
    state.classifier = classifier
    state.batcher = start_batcher(settings, classifier, state.metrics)
    state.ready = True
    state.metrics.set_model(classifier.identity)
    logger.info("model ready", extra={"fields": {
        "model": classifier.identity.name, "version": classifier.identity.version,
        "sha256": classifier.identity.sha256, "threads": settings.intra_op_threads, "runs": settings.runs,
        "wide_threads": settings.wide_threads,
        "batching": settings.batching, "malloc": malloc,
    }})
    try:
        yield
    finally:
        state.ready = False  # shutting down: tell load balancers to stop sending work
        state.not_ready_reason = "the service is shutting down"
        state.metrics.set_model(None)
        if state.batcher is not None:  # in-flight requests are done; this only joins the worker
            await run_in_threadpool(state.batcher.stop)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application; `settings` defaults to the environment, read at start-up.

    Args:
        settings: explicit settings (tests, `dscnet serve`); None reads `DSCNET_*` at start-up.
    """
    metrics = Metrics()
    app = FastAPI(title="DSCNet", version="1.0.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.service = ServiceState(metrics=metrics, settings=settings)
    install_error_handlers(app)
    app.include_router(predict.router)
    app.include_router(health.router)
    app.include_router(v2.router)
    app.include_router(explain.router)
    web.install(app)  # the page at / and /static
    install_admission_control(app)  # inside the key check: requests without a key take no place
    install_access_control(app)  # inside the request context: 401s get an id, a count, a log line
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app


app = create_app()
