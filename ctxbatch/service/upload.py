"""POST /v1/files: a multipart body streamed into the store's upload, never held whole.

python-multipart parses the body as it arrives, in the event loop (it only looks for boundaries);
the file's bytes are handed to the store's FileUpload in slices of HANDOFF_BYTES on the threadpool,
where its lines are checked and stored in chunks (io/files.py). Whatever stops the upload (a bad
line, the size limit, a client gone) abandons it, so nothing of a refused file is kept.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from ctxbatch.errors import FileRefused
from ctxbatch.io import ContextStore
from ctxbatch.io.files import FileUpload
from ctxbatch.service.openai_errors import OpenAIError

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks  # declared for type checkers only

log = logging.getLogger(__name__)

HANDOFF_BYTES = 1024 * 1024
# The form's other fields (purpose, expires_after[...]) are short; this bounds what is held of them.
MAX_FIELD_BYTES = 4096
# What a multipart body holds besides the file: boundaries, part headers, the purpose.
ENVELOPE_BYTES = 64 * 1024
PURPOSES = ("batch",)


def _purpose_refused(purpose: str) -> OpenAIError:
    message = f"purpose must be one of {', '.join(PURPOSES)} here (ctxbatch keeps batch input files), got {purpose!r}"
    return OpenAIError(400, message, param="purpose")


def _too_large(limit: int) -> OpenAIError:
    return OpenAIError(413, f"the file is larger than {limit} bytes (api.max_file_bytes)", param="file")


class _Form:
    """The multipart parser's callbacks: the text fields kept, the file's bytes gathered for handing off."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.fields: dict[str, bytearray] = {}
        self.filename: str | None = None
        self.file_bytes = 0
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._field: bytearray | None = None
        self._in_file = False

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_part,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
        }

    def _part_begin(self) -> None:
        self._disposition = b""
        self._field = None
        self._in_file = False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_part(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in options and name == "file":
            if self.filename is not None:
                raise OpenAIError(400, "one file per upload", param="file")
            self.filename = options[b"filename"].decode("utf-8", "replace") or "upload.jsonl"
            purpose = self.text("purpose")
            if purpose is not None and purpose not in PURPOSES:
                raise _purpose_refused(purpose)  # known before the file: refused before it is read
            self._in_file = True
        elif name:
            self._field = self.fields.setdefault(name, bytearray())

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.file_bytes += end - start
            if self.file_bytes > self.limit:
                raise _too_large(self.limit)
            self.pending.append(data[start:end])
            self.pending_bytes += end - start
        elif self._field is not None:
            self._field += data[start:end]
            if len(self._field) > MAX_FIELD_BYTES:
                raise OpenAIError(400, f"a form field is longer than {MAX_FIELD_BYTES} bytes")

    def take(self) -> bytes:
        data = b"".join(self.pending)
        self.pending, self.pending_bytes = [], 0
        return data

    def text(self, name: str) -> str | None:
        value = self.fields.get(name)
        return None if value is None else value.decode("utf-8", "replace").strip()


def _boundary(request: Request) -> bytes:
    kind, options = parse_options_header(request.headers.get("content-type"))
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        shown = kind.decode("latin-1") or "none"
        raise OpenAIError(415, f"the body must be multipart/form-data with a file and its purpose (got {shown})")
    return options[b"boundary"]


def _refused(exc: FileRefused) -> OpenAIError:
    return OpenAIError(400, str(exc), param=exc.field, code=exc.code)


async def receive(request: Request, store: ContextStore, limit: int) -> dict[str, Any]:
    """Stream an upload's body into the store: the stored file object, or an OpenAIError; nothing kept then."""
    boundary = _boundary(request)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + ENVELOPE_BYTES:
        raise _too_large(limit)
    form = _Form(limit)
    parser = MultipartParser(boundary, form.callbacks())
    upload = await run_in_threadpool(store.upload)
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            if form.pending_bytes >= HANDOFF_BYTES:
                await run_in_threadpool(upload.write, form.take())
        parser.finalize()
        if form.filename is None:
            raise OpenAIError(400, "file is missing: send the JSON Lines file as the form's `file`", param="file")
        purpose = form.text("purpose")
        if purpose is None:
            raise OpenAIError(400, "purpose is missing: send purpose=batch", param="purpose")
        if purpose not in PURPOSES:
            raise _purpose_refused(purpose)
        await run_in_threadpool(upload.write, form.take())
        return await run_in_threadpool(upload.finish, form.filename, purpose)
    except FileRefused as exc:
        await _abandon(upload)
        raise _refused(exc) from None
    except FormParserError as exc:
        await _abandon(upload)
        raise OpenAIError(400, f"the body is not valid multipart/form-data: {exc}") from None
    except ClientDisconnect:
        await _abandon(upload)
        log.warning("a client went away during an upload; nothing was stored")
        raise OpenAIError(400, "the client went away before the file was complete") from None
    except BaseException:
        await _abandon(upload)
        raise


async def _abandon(upload: FileUpload) -> None:
    # Shielded: a cancelled request (the server stopping) still cleans up what it stored.
    with anyio.CancelScope(shield=True):
        await run_in_threadpool(upload.abandon)
