"""Which format a /predict answer takes: the `format` query parameter, else the Accept header.

    ?format=json|fhir|hl7           wins when given
    Accept: application/json                       -> json (also */*, application/*, no header)
            application/fhir+json (or application/json+fhir)        -> fhir
            x-application/hl7-v2+er7 (or application/hl7-v2+er7)    -> hl7
            anything else only                     -> 406 not_acceptable

Accept is read as RFC 9110 says: each range with its q (default 1), the most specific range
that matches a format sets that format's q, q=0 refuses it; the highest q wins, ties go to
json, then fhir, then hl7.
"""

from __future__ import annotations

import math
from typing import Literal

ResponseFormat = Literal["json", "fhir", "hl7"]

MEDIA_TYPES: dict[ResponseFormat, tuple[str, ...]] = {
    "json": ("application/json",),
    "fhir": ("application/fhir+json", "application/json+fhir"),
    "hl7": ("x-application/hl7-v2+er7", "application/hl7-v2+er7"),
}
_PREFERENCE: tuple[ResponseFormat, ...] = ("json", "fhir", "hl7")


class NotAcceptableError(ValueError):
    """The Accept header allows none of the formats /predict can produce."""

    reason = "not_acceptable"


def choose_format(query: ResponseFormat | None, accept: str | None) -> ResponseFormat:
    """The format to answer in.

    Args:
        query: the `format` query parameter, if given (it wins over Accept).
        accept: the Accept header, if any.
    """
    if query is not None:
        return query
    ranges = _parse_accept(accept or "")
    if not ranges:
        return "json"
    best: ResponseFormat | None = None
    best_q = 0.0
    for fmt in _PREFERENCE:
        q = max((_quality(media, ranges) for media in MEDIA_TYPES[fmt]), default=0.0)
        if q > best_q:
            best, best_q = fmt, q
    if best is None:
        offered = ", ".join(media for fmt in _PREFERENCE for media in MEDIA_TYPES[fmt][:1])
        raise NotAcceptableError(f"cannot answer in any type the Accept header allows; /predict offers {offered}")
    return best


def require_acceptable(accept: str | None, media: str, endpoint: str) -> None:
    """For an endpoint with one answer type: NotAcceptableError when Accept rules it out (as /predict does)."""
    ranges = _parse_accept(accept or "")
    if ranges and _quality(media, ranges) <= 0.0:
        raise NotAcceptableError(f"cannot answer in any type the Accept header allows; {endpoint} answers {media} only")


def _parse_accept(header: str) -> list[tuple[str, str, float]]:
    """(type, subtype, q) per media range; a range without a "/" is ignored, a q outside 0..1 refused."""
    ranges = []
    for part in header.split(","):
        media, *params = (piece.strip() for piece in part.split(";"))
        if "/" not in media:
            continue
        kind, _, subtype = media.lower().partition("/")
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                q = _weight(value, part.strip())
        ranges.append((kind.strip(), subtype.strip(), q))
    return ranges


def _weight(value: str, media_range: str) -> float:
    """A range's q, 0 to 1 (RFC 9110). Anything else is refused, neither clamped nor skipped: a client
    whose only range was `application/fhir+json;q=abc` would otherwise get JSON, silently."""
    try:
        q = float(value)
    except ValueError:
        q = math.nan
    if not 0.0 <= q <= 1.0:
        raise NotAcceptableError(f"the Accept header's q={value.strip()} in {media_range!r} is not a number from 0 to 1")
    return q


def _quality(media: str, ranges: list[tuple[str, str, float]]) -> float:
    """The q of the most specific range matching `media` (0 when none does)."""
    kind, _, subtype = media.partition("/")
    best_specificity, q = -1, 0.0
    for r_kind, r_subtype, r_q in ranges:
        if r_kind == kind and r_subtype == subtype:
            specificity = 2
        elif r_kind == kind and r_subtype == "*":
            specificity = 1
        elif r_kind == "*" and r_subtype == "*":
            specificity = 0
        else:
            continue
        if specificity > best_specificity:
            best_specificity, q = specificity, r_q
    return q
