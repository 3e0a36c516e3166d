"""Prometheus metrics in the `dscnet_` namespace, one registry per app.

A registry per app (not prometheus-client's global one) lets tests build many apps in one
process, and keeps library defaults out of `/metrics` except the process collector.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from app.classifier import ModelIdentity

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    """The service's metrics; `endpoint` labels are route templates, never raw paths."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter(
            "dscnet_requests", "HTTP requests answered, by endpoint and status.",
            ["endpoint", "status"], registry=r,
        )
        self.in_flight = Gauge("dscnet_requests_in_flight", "HTTP requests being handled.", registry=r)
        self.stage_seconds = Histogram(
            "dscnet_stage_duration_seconds",
            "Time per request stage: decode (all images of the request), inference, total.",
            ["endpoint", "stage"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "dscnet_batch_size", "Images per model run.", buckets=BATCH_BUCKETS, registry=r
        )
        self.queued_images = Gauge(
            "dscnet_batch_queue_images", "Images waiting for a shared model run (micro-batching).", registry=r
        )
        self.predictions = Counter(
            "dscnet_predictions", "Images classified, by predicted class.", ["label"], registry=r
        )
        self.referrals = Counter(
            "dscnet_referrals", "Classified images referred to a person, by cause (an image may have several): "
            "low_confidence, unfamiliar, quality_warning, no_threshold. A rising unfamiliar share means the "
            "images sent differ from those the model was validated on.", ["cause"], registry=r,
        )
        self.quality_warnings = Counter(
            "dscnet_quality_warnings", "Input-quality warnings raised, by code.", ["code"], registry=r
        )
        self.rejected = Counter(
            "dscnet_images_rejected", "Images refused, by reason code.", ["reason"], registry=r
        )
        self.model_info = Gauge(
            "dscnet_model_info", "The model being served (value 1).",
            ["name", "version", "sha256"], registry=r,
        )
        self.ready = Gauge("dscnet_ready", "1 when the model is verified and warmed up.", registry=r)

    def set_model(self, identity: ModelIdentity | None) -> None:
        self.model_info.clear()
        if identity is not None:
            self.model_info.labels(identity.name, identity.version, identity.sha256).set(1)
        self.ready.set(1 if identity is not None else 0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
