"""OpenAI file objects (`/v1/files`) in the `files` collection: uploads kept in chunks of whole lines.

An upload streams in (`FileUpload.write`): its bytes are cut into lines, each line is checked as an
OpenAI batch request as it arrives (io/openai_batch.py, then the rules every context keeps), and
whole lines are gathered into chunks of about CHUNK_BYTES, each one document
`{_id: "<file id>:<seq>", file_id, seq, data}`. A marker `{_id: <file id>, state: "uploading"}`
written first holds a lease (`expires_ms`), renewed as the upload goes on. When the last chunk is
stored, ONE replace turns the marker into the file object (`object: "file"`, bytes, created_at,
filename, purpose, status, chunks): the commit point; until then no file of that id is found. A
refused upload deletes what it wrote at once; one cut off (the server stopped) is deleted by `tidy`
when its lease has expired, which every upload runs first.

The bytes are kept as they were sent, so the content comes back byte for byte; a batch made from
the file parses its lines again (`submit`) and streams them into a submission (io/staging.py).
"""

from __future__ import annotations

import codecs
import json
import logging
import time
import uuid
from array import array
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

import bson
from pymongo.errors import PyMongoError

from ctxbatch.config import DEFAULT_PRIORITY
from ctxbatch.errors import FileNotFound, FileRefused, SubmitError
from ctxbatch.io.connection import Connection
from ctxbatch.io.keyset import page_after
from ctxbatch.io.openai_batch import as_record, as_records
from ctxbatch.io.schema import MAX_BSON_BYTES, epoch_ms, eq, utcnow, validate_request
from ctxbatch.io.staging import BatchOptions, Submissions

log = logging.getLogger("ctxbatch.io.files")

FILE_PREFIX = "file-"
CHUNK_BYTES = 4 * 1024 * 1024
# One line is one chunk at most, and a chunk is one document.
MAX_LINE_BYTES = MAX_BSON_BYTES - 64 * 1024
LEASE_SECONDS = 600.0
UPLOADING = "uploading"
INVALID_JSON = "invalid_json_line"


def _chunk_id(file_id: str, seq: int) -> str:
    return f"{file_id}:{seq:08d}"


def _field(field: str | None) -> str | None:
    """A context's field as the line's: its payload is the line's method, url and body."""
    if field == "payload":
        return "body"
    return field.removeprefix("payload.") if field else field


def _code(exc: SubmitError) -> str:
    if exc.earlier is not None:
        return "duplicate_custom_id"
    if exc.message == "is missing":
        return "missing_required_parameter"
    return "invalid_url" if exc.field == "url" else "invalid_request"


def refused(exc: SubmitError, line: int | None, locate: Any = "line {}".format) -> FileRefused:
    """A SubmitError about a request as the FileRefused of its line."""
    return FileRefused(line, _field(exc.field), exc.said(locate), _code(exc))


def parse_line(number: int, raw: bytes) -> Any:
    """The JSON value of a line (None for a blank one); FileRefused naming the line otherwise."""
    if number == 1:
        raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileRefused(number, None, f"is not UTF-8: {exc.reason}", INVALID_JSON) from None
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise FileRefused(number, None, f"is not valid JSON: {exc.msg} (column {exc.colno})", INVALID_JSON) from None
    except RecursionError:
        raise FileRefused(number, None, "nests too deeply to be stored", INVALID_JSON) from None


class FileUpload:
    """One file on its way in: lines checked as they arrive, stored in chunks, committed by `finish`."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.file_id = FILE_PREFIX + uuid.uuid4().hex
        self.token = uuid.uuid4().hex
        self.size = 0
        self.lines = 0
        self.requests = 0
        self.chunks = 0
        self._partial = bytearray()  # the line still arriving
        self._chunk: list[bytes] = []
        self._chunk_bytes = 0
        self._custom_ids: dict[str, int] = {}
        self._models: set[Any] = set()  # the bodies' `model`s, up to two: a batch shows one only when all agree
        self._renew_at = 0.0

    def _lease(self) -> dict[str, Any]:
        self._renew_at = time.monotonic() + LEASE_SECONDS / 3
        return {"expires_ms": epoch_ms(utcnow()) + round(LEASE_SECONDS * 1000), "chunks": self.chunks}

    def begin(self) -> None:
        marker = {"_id": self.file_id, "state": UPLOADING, "token": self.token, **self._lease()}
        self.connection.files.insert_one(marker)

    def _renew(self, force: bool = False) -> None:
        if not force and time.monotonic() < self._renew_at:
            return
        mine = {"_id": self.file_id, "token": eq(self.token), "state": eq(UPLOADING)}
        if not self.connection.files.update_one(mine, {"$set": self._lease()}).matched_count:
            raise FileRefused(None, None, "the upload stalled past its lease and was cleaned up", "upload_stalled")

    def write(self, data: bytes) -> None:
        """The next bytes of the file: each whole line is checked now, and stored with its chunk."""
        self.size += len(data)
        start = 0
        while (newline := data.find(b"\n", start)) >= 0:
            piece = data[start : newline + 1]
            if self._partial:
                self._partial += piece
                piece = bytes(self._partial)
                self._partial.clear()
            self._line(piece)
            start = newline + 1
        self._partial += data[start:]
        if len(self._partial) > MAX_LINE_BYTES:
            raise FileRefused(self.lines + 1, None, f"is longer than {MAX_LINE_BYTES} bytes", "line_too_long")
        self._renew()

    def _line(self, raw: bytes) -> None:
        self.lines += 1
        if len(raw) > MAX_LINE_BYTES:
            raise FileRefused(self.lines, None, f"is longer than {MAX_LINE_BYTES} bytes", "line_too_long")
        self._check(self.lines, raw)
        if self._chunk and self._chunk_bytes + len(raw) > CHUNK_BYTES:
            self._flush()
        self._chunk.append(raw)
        self._chunk_bytes += len(raw)

    def _check(self, number: int, raw: bytes) -> None:
        line = parse_line(number, raw)
        if line is None:
            return
        index, self.requests = self.requests, self.requests + 1
        try:
            record = as_record(index, line)
            request = validate_request(index, record, DEFAULT_PRIORITY)
        except SubmitError as exc:
            raise refused(exc, number) from None
        if len(self._models) < 2:
            self._models.add(record["payload"]["body"].get("model"))
        assert request.custom_id is not None  # as_record requires it
        first = self._custom_ids.setdefault(request.custom_id, number)
        if first != number:
            message = f"{request.custom_id!r} is given twice; it must be unique in the file; first at line {first}"
            raise FileRefused(number, "custom_id", message, "duplicate_custom_id")

    def _flush(self) -> None:
        if not self._chunk:
            return
        document = {
            "_id": _chunk_id(self.file_id, self.chunks),
            "file_id": self.file_id,
            "seq": self.chunks,
            "data": bson.Binary(b"".join(self._chunk)),
        }
        self.connection.files.insert_one(document)
        self.chunks += 1
        self._chunk, self._chunk_bytes = [], 0
        self._renew(force=True)

    def finish(self, filename: str, purpose: str) -> dict[str, Any]:
        """Store what is left and commit: the file object, or FileRefused (then abandon() it)."""
        if self._partial:
            last = bytes(self._partial)
            self._partial.clear()
            self._line(last)
        if not self.requests:
            raise FileRefused(None, None, "the file holds no requests", "empty_file")
        self._flush()
        stored = {
            "_id": self.file_id,
            "object": "file",
            "bytes": self.size,
            "created_at": utcnow(),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "chunks": self.chunks,
            "requests": self.requests,
            "model": next(iter(self._models)) if len(self._models) == 1 else None,
        }
        mine = {"_id": self.file_id, "token": eq(self.token), "state": eq(UPLOADING)}
        if not self.connection.files.replace_one(mine, stored).matched_count:
            raise FileRefused(None, None, "the upload stalled past its lease and was cleaned up", "upload_stalled")
        return file_view(stored)

    def abandon(self) -> None:
        """Best effort: delete what was stored (`tidy` does it later if the database is away)."""
        try:
            mine = {"_id": self.file_id, "token": eq(self.token), "state": eq(UPLOADING)}
            if self.connection.files.delete_one(mine).deleted_count:
                self.connection.files.delete_many({"file_id": eq(self.file_id)})
        except PyMongoError as exc:
            log.info("upload %s: its chunks are left for the janitor (%s)", self.file_id, type(exc).__name__)


def file_view(stored: Mapping[str, Any]) -> dict[str, Any]:
    """A stored file object as users see it: `_id` is `id`; its chunks, counts and model are internal."""
    internal = ("_id", "chunks", "requests", "model")
    view = {"id": stored["_id"], **{k: v for k, v in stored.items() if k not in internal}}
    return view


class Files:
    """OpenAI's file objects over submissions: upload, read back, delete, and submit as a batch."""

    def __init__(self, connection: Connection, submissions: Submissions) -> None:
        self.connection = connection
        self.submissions = submissions

    def upload(self) -> FileUpload:
        self.connection.ensure_indexes()
        self.tidy()
        upload = FileUpload(self.connection)
        upload.begin()
        return upload

    def _stored(self, file_id: str) -> dict[str, Any]:
        found = None
        if isinstance(file_id, str):
            found = self.connection.files.find_one({"_id": eq(file_id), "object": eq("file")})
        if found is None:
            raise FileNotFound(str(file_id))
        return found

    def get(self, file_id: str) -> dict[str, Any]:
        return file_view(self._stored(file_id))

    def page(
        self, after: str | None, limit: int, ascending: bool = False, purpose: str | None = None
    ) -> tuple[list[dict[str, Any]], bool]:
        """Up to `limit` stored files past the file `after` (newest first unless `ascending`), only those
        of `purpose` if given; and whether more follow."""
        anchor = None if after is None else self._stored(after)
        found, more = page_after(
            self.connection.files,
            anchor,
            limit,
            ascending=ascending,
            keep=lambda stored: stored.get("object") == "file" and purpose in (None, stored.get("purpose")),
        )
        return [file_view(stored) for stored in found], more

    def content(self, file_id: str) -> Iterator[bytes]:
        stored = self._stored(file_id)  # now, so an unknown file fails before anything streams
        return self._chunks(file_id, stored["chunks"])

    def _chunks(self, file_id: str, count: int) -> Iterator[bytes]:
        for seq in range(count):
            # One document per read: a chunk is a few MB, and this keeps one in memory at a time.
            found = self.connection.files.find_one({"_id": eq(_chunk_id(file_id, seq))})
            if found is None:
                raise FileNotFound(file_id)  # deleted while it was read
            yield bytes(found["data"])

    def lines(self, file_id: str) -> Iterator[tuple[int, bytes]]:
        """(line number, raw line) of a stored file, streamed chunk by chunk; chunks hold whole lines."""
        number = 0
        for chunk in self.content(file_id):
            # Split at b"\n" alone, as the upload did: bytes.splitlines() also breaks at a lone \r.
            start = 0
            while start < len(chunk):
                end = chunk.find(b"\n", start) + 1 or len(chunk)
                number += 1
                yield number, chunk[start:end]
                start = end

    def delete(self, file_id: str) -> None:
        self._stored(file_id)
        # The object first: once it is gone no reader starts, and leftover chunks are only garbage.
        self.connection.files.delete_one({"_id": eq(file_id), "object": eq("file")})
        self.connection.files.delete_many({"file_id": eq(file_id)})

    def tidy(self) -> int:
        """Delete uploads cut off before their commit, once their lease expired; how many."""
        files = self.connection.files
        settled = 0
        expired = {"expires_ms": {"$lt": epoch_ms(utcnow())}}
        for marker in files.find(expired, {"_id": 1}):
            if files.delete_one({"_id": marker["_id"], "state": eq(UPLOADING), **expired}).deleted_count:
                files.delete_many({"file_id": eq(marker["_id"])})
                settled += 1
        return settled

    def submit(self, file_id: str, endpoint: str, options: BatchOptions) -> tuple[str, int]:
        """The file's requests as one batch; (batch id, contexts).

        A line that does not fit the batch (its url is not the batch's endpoint) does not refuse
        the call: as OpenAI's Batch API does, the batch is made and `failed`, with no contexts and
        an error naming the line.
        """
        stored = self._stored(file_id)
        if isinstance(stored.get("model"), str):
            options = replace(options, extra={**options.extra, "model": stored["model"]})
        numbers = array("L")

        def requests() -> Iterator[Any]:
            for number, raw in self.lines(file_id):
                line = parse_line(number, raw)
                if line is not None:
                    numbers.append(number)
                    yield line

        def locate(index: int) -> str:
            return f"line {numbers[index]}"

        try:
            submitted = self.submissions.submit(as_records(requests(), endpoint), None, options)
            return submitted.batch_id, submitted.count
        except SubmitError as exc:
            line = None if exc.index is None else numbers[exc.index]
            error = refused(exc, line, locate)
        except FileRefused as exc:
            error = exc
        failure = {"code": error.code, "message": str(error), "param": error.field, "line": error.line}
        return self.submissions.refuse(options, [failure]), 0
