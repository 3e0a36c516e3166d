"""The container's start command: size workers and onnxruntime threads to the container, then serve.

    WEB_CONCURRENCY     uvicorn worker processes (uvicorn's own variable); default 1
    DSCNET_CPUS         CPUs of each worker's model runs; default usable CPUs // workers, at least 1

"Usable CPUs" is `app.cpus.available_cpus()`: the cgroup CPU quota and the affinity mask, not
the host's core count, so `--cpus 2` on a 64-core host gives 2. The workers' CPUs together never
exceed the quota by default: oversubscribing it makes the kernel throttle every process. Each
worker lays its runs out on its CPUs (app.settings: one run per CPU, and a lone run on all).

One worker (the default) runs `dscnet serve`, the project's own start-up path. More workers
run uvicorn's process manager with the same JSON log lines, after the model has passed its
checks once here: uvicorn restarts a worker whose start-up failed, forever, instead of
exiting. Each worker has its own metrics registry, so /metrics shows the worker that
answered the scrape: scale out with replicas (compose, Kubernetes) when the metrics matter.
The workers drain within DSCNET_SHUTDOWN_TIMEOUT_S as one does, but they are uvicorn's own
servers: readiness turns false when a worker's drain ends, not when it begins (app.server).
"""

from __future__ import annotations

import os
import socket
import sys

from pydantic import ValidationError

MAX_WORKERS = 64


def worker_count(environ: dict[str, str]) -> int:
    """WEB_CONCURRENCY as a worker count; ValueError names the variable when it is not 1..64."""
    text = environ.get("WEB_CONCURRENCY", "1").strip() or "1"
    if not text.isdigit() or not 1 <= int(text) <= MAX_WORKERS:
        raise ValueError(f"WEB_CONCURRENCY must be a whole number from 1 to {MAX_WORKERS}, got {text!r}")
    return int(text)


def cpus_per_worker(cpus: int, workers: int) -> int:
    """Each worker's share of the CPUs, so that the workers together fit them."""
    return max(1, cpus // workers)


def log_config(level: str) -> dict:
    """uvicorn's logging as JSON lines on stderr (app.logs), applied in every worker process."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "app.logs.JsonFormatter"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {name: {"handlers": [], "propagate": True} for name in ("uvicorn", "uvicorn.error")},
    }


def workers_config(settings, workers: int):  # (app.settings.Settings, int) -> uvicorn.Config
    """uvicorn's configuration for `workers` processes, with the settings `dscnet serve` applies."""
    import uvicorn

    return uvicorn.Config(
        "app.main:app", host=settings.host, port=settings.port, workers=workers,
        log_config=log_config(settings.log_level), log_level=settings.log_level, access_log=False,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
    )


def nodelay_listener(sock: socket.socket) -> socket.socket:
    """uvicorn's bound listener for the workers, re-opened with its protocol named.

    asyncio switches Nagle's algorithm off (TCP_NODELAY) only on connections whose socket
    reports IPPROTO_TCP, and an accepted socket takes that from its listener. uvicorn binds the
    workers' listener with protocol 0 (uvicorn issue #3149), so with Nagle on every keep-alive
    response after the first waited for the client's delayed ACK: about 40 ms more per request
    (measured here: a lone /predict with two workers took 70-90 ms, with one 23-44 ms). A unix
    socket is returned as it is.
    """
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return sock
    return socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())


def main() -> int:
    from app.cpus import available_cpus
    from app.settings import Settings, describe_settings_error

    try:
        workers = worker_count(dict(os.environ))
    except ValueError as err:
        print(f"dscnet container: {err}", file=sys.stderr)
        return 2
    if not os.environ.get("DSCNET_CPUS"):
        os.environ["DSCNET_CPUS"] = str(cpus_per_worker(available_cpus(), workers))
    try:
        settings = Settings()
    except ValidationError as err:
        print(f"dscnet container: {describe_settings_error(err)}", file=sys.stderr)
        return 2
    if workers == 1:
        from dscnet_cli import main as dscnet

        return dscnet(["serve"])
    from app.classifier import ModelLoadError, load_classifier

    try:
        load_classifier(settings.model_path, settings.card_path, threads=1)
    except ModelLoadError as err:
        print(f"dscnet container: the model could not be loaded: {err}", file=sys.stderr)
        return 1
    from uvicorn.supervisors import Multiprocess

    # The workers read DSCNET_* (their CPUs included) from the environment set above. This is
    # uvicorn.run's multi-worker path, with the listener's protocol set (nodelay_listener).
    config = workers_config(settings, workers)
    Multiprocess(config, sockets=[nodelay_listener(config.bind_socket())]).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
