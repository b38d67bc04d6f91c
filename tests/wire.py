"""A TCP proxy in front of the real server that can lose one reply: the write is applied, its answer never comes.

That is what a network cut or a server killed between commit and reply does to a client, made
exact: `lose_reply_to(pattern)` lets the next request whose bytes match reach the server, then
drops the server's reply and closes that connection, so pymongo sees AutoReconnect for a command
the server carried out. Every other message passes through as it is.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

HEADER = struct.Struct("<iiii")  # messageLength, requestID, responseTo, opCode


def command(name: str, collection: str) -> re.Pattern[bytes]:
    """The bytes of a `{name: collection}` command as BSON puts them first in an OP_MSG body."""
    key, value = re.escape(name.encode()), re.escape(collection.encode())
    return re.compile(rb"\x02" + key + rb"\x00.{4}" + value + rb"\x00", re.S)


def _messages(sock: socket.socket) -> Iterator[bytes]:
    """Whole wire-protocol messages as they arrive; ends when the peer closes."""
    buffer = b""
    while True:
        while len(buffer) >= HEADER.size and len(buffer) >= (length := HEADER.unpack_from(buffer)[0]):
            yield buffer[:length]
            buffer = buffer[length:]
        try:
            chunk = sock.recv(65536)
        except OSError:
            return
        if not chunk:
            return
        buffer += chunk


class ReplyLosingProxy:
    """Listens on 127.0.0.1; `uri` reaches the server behind it."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pattern: re.Pattern[bytes] | None = None
        self.lost = threading.Event()  # set once a reply was dropped
        self._sockets: list[socket.socket] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def lose_reply_to(self, pattern: re.Pattern[bytes]) -> None:
        with self._lock:
            self._pattern = pattern
            self.lost.clear()

    def close(self) -> None:
        self._listener.close()
        for sock in list(self._sockets):
            _close(sock)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self._sockets += [client, server]
            doomed: set[int] = set()  # request ids whose reply is to be lost
            threading.Thread(target=self._requests, args=(client, server, doomed), daemon=True).start()
            threading.Thread(target=self._replies, args=(server, client, doomed), daemon=True).start()

    def _requests(self, client: socket.socket, server: socket.socket, doomed: set[int]) -> None:
        for message in _messages(client):
            with self._lock:
                if self._pattern is not None and self._pattern.search(message):
                    doomed.add(HEADER.unpack_from(message)[1])
                    self._pattern = None
            try:
                server.sendall(message)
            except OSError:
                break
        _close(server)

    def _replies(self, server: socket.socket, client: socket.socket, doomed: set[int]) -> None:
        for message in _messages(server):
            if HEADER.unpack_from(message)[2] in doomed:
                self.lost.set()
                break  # applied on the server; the client never hears of it
            try:
                client.sendall(message)
            except OSError:
                break
        _close(client)
        _close(server)


def _close(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@contextmanager
def reply_losing_proxy(uri: str) -> Iterator[ReplyLosingProxy]:
    host, port = uri.removeprefix("mongodb://").split("/")[0].split(",")[0].rsplit(":", 1)
    proxy = ReplyLosingProxy(host, int(port))
    try:
        yield proxy
    finally:
        proxy.close()
