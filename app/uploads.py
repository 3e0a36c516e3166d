"""Reading image uploads from a multipart/form-data request, in memory and within limits.

The request body is streamed through python-multipart's parser chunk by chunk; reading stops
as soon as a limit is crossed (the declared Content-Length is checked before any byte is
read). Only parts of the expected field are accepted, each capped at the per-file limit; a
part in any other field is refused (422), never silently skipped; nothing is ever spooled to
disk. The whole body must arrive within `body_timeout_s` (408 otherwise): a client that
stalls mid-upload would otherwise hold its admission place (app.admission) for as long as its
connection stays open, and a dead peer's half-open connection would hold it forever.
Starlette's own form parsing is not used because it would spool files over 1 MiB to a
temporary file and could not stop at the Nth file of a batch.

Exceptions (`reason` is the stable code in the error body, `field` the form field):
    UploadError
      +-- NotMultipartError      (415: the request is not multipart/form-data)
      +-- MalformedUploadError   (400: a broken or truncated multipart body)
      +-- MissingFieldError      (422: no part in the expected field)
      +-- EmptyFileError         (422: the part holds 0 bytes)
      +-- ExtraFileError         (422: more than one file where one is expected)
      +-- FileTooLargeError      (413: one file over the per-file limit)
      +-- RequestTooLargeError   (413: the whole body over its limit)
      +-- TooManyFilesError      (413: more files than the batch limit)
      +-- UnexpectedFieldError   (422: a part in a field the endpoint does not read)
      +-- BodyTimeoutError       (408: the body did not arrive within its time limit)
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import unquote

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

MAX_FILENAME_CHARS = 255
MAX_FIELD_NAME_CHARS = 64  # of an unexpected field's name, quoted in its error


class UploadError(ValueError):
    reason = "invalid_upload"

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


class NotMultipartError(UploadError):
    reason = "not_multipart"


class MalformedUploadError(UploadError):
    reason = "malformed_multipart"


class ClientDisconnectedError(MalformedUploadError):
    """The client went away mid-upload: nobody reads the answer, but the log and metrics say what happened."""

    reason = "client_disconnected"


class MissingFieldError(UploadError):
    reason = "missing_field"


class EmptyFileError(UploadError):
    reason = "empty_file"


class ExtraFileError(UploadError):
    reason = "extra_file"


class FileTooLargeError(UploadError):
    reason = "file_too_large"


class RequestTooLargeError(UploadError):
    reason = "request_too_large"


class TooManyFilesError(UploadError):
    reason = "too_many_files"


class UnexpectedFieldError(UploadError):
    reason = "unexpected_field"


class BodyTimeoutError(UploadError):
    reason = "body_timeout"


@dataclass
class Upload:
    """One part of the expected field: its bytes, or the error that stopped us keeping them."""

    filename: str | None
    data: bytes
    error: UploadError | None = None


@dataclass(frozen=True)
class UploadLimits:
    field: str
    max_files: int
    max_file_bytes: int
    max_body_bytes: int
    #: True for batches: an oversized or empty file becomes that item's error, not the request's.
    per_file_errors: bool = False
    #: seconds the whole body may take to arrive (DSCNET_BODY_TIMEOUT_S)
    body_timeout_s: float = 60.0


@asynccontextmanager
async def body_deadline(timeout_s: float, field: str) -> AsyncIterator[None]:
    """Raise `BodyTimeoutError` if the body read inside takes longer than `timeout_s`."""
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except TimeoutError as err:
        raise BodyTimeoutError(
            f"the request body did not arrive within {timeout_s:g} s; the connection stalled or is too slow",
            field,
        ) from err


def check_declared_size(content_type: str | None, content_length: str | None, limits: UploadLimits) -> bytes:
    """Refuse a request by its headers before reading the body; returns the multipart boundary."""
    media_type, params = parse_options_header(content_type or "")
    if media_type != b"multipart/form-data":
        raise NotMultipartError(
            f"send the image as multipart/form-data in the field {limits.field!r}", limits.field
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise MalformedUploadError("the multipart Content-Type has no boundary", limits.field)
    if content_length is not None and content_length.isdigit() and int(content_length) > limits.max_body_bytes:
        raise RequestTooLargeError(
            f"the request body is {int(content_length):,} bytes, over the limit of {limits.max_body_bytes:,}",
            limits.field,
        )
    return boundary


async def read_uploads(
    chunks: AsyncIterator[bytes], boundary: bytes, limits: UploadLimits
) -> list[Upload]:
    """Parse the body stream and return the expected field's files, in the order sent."""
    collector = _PartCollector(limits)
    try:
        parser = MultipartParser(boundary, collector.callbacks())
    except ValueError as err:  # FormParserError: e.g. a boundary over 70 bytes
        raise MalformedUploadError(f"the multipart boundary is invalid: {err}", limits.field) from err
    received = 0
    async with body_deadline(limits.body_timeout_s, limits.field):
        async for chunk in chunks:
            received += len(chunk)
            if received > limits.max_body_bytes:
                raise RequestTooLargeError(
                    f"the request body is over the limit of {limits.max_body_bytes:,} bytes", limits.field
                )
            try:
                parser.write(chunk)
            except MultipartParseError as err:
                raise MalformedUploadError(f"the multipart body is malformed: {err}", limits.field) from err
    parser.finalize()
    if not collector.ended:
        raise MalformedUploadError("the multipart body ended before its closing boundary", limits.field)
    if not collector.uploads:
        raise MissingFieldError(f"no file in the field {limits.field!r}", limits.field)
    return collector.uploads


# RFC 6266 / 5987: filename*=charset'language'percent-encoded (python-multipart's parser drops it)
_EXTENDED_FILENAME = re.compile(rb"""(?:^|;)\s*filename\*\s*=\s*([^;'\s]*)'[^']*'([^;\s]*)""", re.IGNORECASE)


def _filename(disposition: bytes, options: dict[bytes, bytes]) -> str | None:
    """The part's file name: `filename*` before `filename`, as RFC 6266 asks."""
    extended = _EXTENDED_FILENAME.search(disposition)
    if extended is not None:
        charset, encoded = (group.decode("latin-1") for group in extended.groups())
        try:
            return unquote(encoded, encoding=charset or "utf-8", errors="replace")
        except LookupError:  # a charset Python does not know: the plain name, if any
            pass
    filename = options.get(b"filename")
    return filename.decode("utf-8", "replace") if filename is not None else None


class _PartCollector:
    """python-multipart callbacks that keep the expected field's parts in memory."""

    def __init__(self, limits: UploadLimits) -> None:
        self.limits = limits
        self.uploads: list[Upload] = []
        self.ended = False
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._current: Upload | None = None
        self._buffer = bytearray()

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_val,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._disposition = b""
        self._current = None
        self._buffer = bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_val(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name != self.limits.field:
            # Skipping it would drop what the client sent without a word (a file under a
            # misspelt name, or data it expects us to use): refuse the request instead.
            name = name[:MAX_FIELD_NAME_CHARS]
            shown = f"the field {name!r}" if name else "a part with no field name"
            raise UnexpectedFieldError(
                f"{shown} is not read by this endpoint; send the image(s) in {self.limits.field!r} only",
                name or self.limits.field,
            )
        if len(self.uploads) + 1 > self.limits.max_files:
            if self.limits.max_files == 1:
                raise ExtraFileError(
                    f"more than one file in the field {self.limits.field!r}; use /predict-batch",
                    self.limits.field,
                )
            raise TooManyFilesError(
                f"more than {self.limits.max_files} files in the field {self.limits.field!r}",
                self.limits.field,
            )
        name = _filename(self._disposition, options)
        if name is not None and len(name) > MAX_FILENAME_CHARS:  # shortened, and seen to be: it ends in "…"
            name = name[:MAX_FILENAME_CHARS - 1] + "\u2026"
        self._current = Upload(filename=name, data=b"")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        upload = self._current
        if upload is None or upload.error is not None:
            return
        if len(self._buffer) + (end - start) > self.limits.max_file_bytes:
            error = FileTooLargeError(
                f"the file is over the limit of {self.limits.max_file_bytes:,} bytes", self.limits.field
            )
            if not self.limits.per_file_errors:
                raise error
            upload.error = error
            self._buffer = bytearray()  # drop what we kept; the rest of the part is skipped
            return
        self._buffer += data[start:end]

    def _part_end(self) -> None:
        upload = self._current
        if upload is None:
            return
        upload.data = bytes(self._buffer)
        self._buffer = bytearray()
        if upload.error is None and not upload.data:
            upload.error = EmptyFileError("the file is empty (0 bytes)", self.limits.field)
            if not self.limits.per_file_errors:
                raise upload.error
        self.uploads.append(upload)
        self._current = None

    def _end(self) -> None:
        self.ended = True
