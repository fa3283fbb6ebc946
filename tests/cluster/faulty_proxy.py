"""A TCP proxy on loopback that can make the service behind it fail, then heal.

``fail("reset")`` aborts every open connection and answers new ones with a TCP reset; ``fail("503")`` answers
every new request with ``503 Service Unavailable`` (S3's ``SlowDown`` error) and closes; ``fail("cut-reads",
path=b"/landing/")`` lets every request through but cuts the response to each GET whose path holds ``path`` after
its first bytes: the object starts to download, then the connection is reset. ``heal()`` passes traffic through
again. Counts what it refused or cut, so a test can prove the fault was seen.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading

log = logging.getLogger(__name__)

_UNAVAILABLE = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                b"<Message>Please reduce your request rate.</Message></Error>")
_503 = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(_UNAVAILABLE), _UNAVAILABLE))
MODES = ("reset", "503", "cut-reads")
CUT_AFTER = 200
"""Response bytes of a matched GET passed before the cut: the status line and part of the headers."""


def _abort(sock: socket.socket) -> None:
    """Close with a TCP RST (linger 0), as a crashed server or a dropped load balancer would.

    ``shutdown`` first: closing a socket another thread is blocked reading neither wakes that thread nor sends the
    reset, so the client would wait for its request timeout instead.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class FaultyProxy:
    """Forward ``127.0.0.1:port`` to ``target`` (host, port) until told to fail."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._mode: str | None = None
        self._cut_path = b""
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._closed = False
        self.refused = 0
        self.forwarded = 0
        self._thread = threading.Thread(target=self._accept, name="faulty-proxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail(self, mode: str = "reset", path: bytes = b"") -> None:
        """Start failing: drop the open connections and refuse new ones the ``mode`` way (``cut-reads``: cut the
        responses to GETs of ``path``, on open and new connections alike)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        with self._lock:
            self._mode, self._cut_path = mode, path
            doomed, self._open = (set(), self._open) if mode == "cut-reads" else (self._open, set())
        for sock in doomed:
            _abort(sock)
        log.info("proxy :%s failing (%s)", self.port, mode)

    def heal(self) -> None:
        with self._lock:
            self._mode = None
        log.info("proxy :%s healed after refusing %s connections", self.port, self.refused)

    def close(self) -> None:
        self._closed = True
        try:
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the accept() that close() alone leaves blocked
        except OSError:
            pass
        self._server.close()
        self.fail("reset")
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                mode = self._mode
            if mode is not None and mode != "cut-reads":
                self.refused += 1
                threading.Thread(target=self._refuse, args=(client, mode), daemon=True).start()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                _abort(client)
                continue
            upstream.settimeout(None)
            self.forwarded += 1
            with self._lock:
                self._open.update((client, upstream))
            doomed = threading.Event()  # set by the request side when the response to it must be cut
            threading.Thread(target=self._pipe, args=(client, upstream, doomed, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, doomed, False), daemon=True).start()

    def _passed(self, size: int) -> None:
        """Called after each response chunk is forwarded (a hook for proxies that fail by themselves)."""

    def _matches(self, head: bytes) -> bool:
        """Return whether ``head`` starts a GET of a path holding the configured marker (query string aside)."""
        line = head.split(b"\r\n", 1)[0].split()
        return len(line) >= 2 and line[0] == b"GET" and self._cut_path in line[1].split(b"?", 1)[0]

    @staticmethod
    def _refuse(client: socket.socket, mode: str) -> None:
        if mode == "503":
            client.settimeout(5)
            try:
                data = b""
                while b"\r\n\r\n" not in data:  # the request head; a body, if any, is never read
                    chunk = client.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                client.sendall(_503)
            except OSError:
                pass
        _abort(client)

    def _pipe(self, src: socket.socket, dst: socket.socket, doomed: threading.Event, request: bool) -> None:
        try:
            while chunk := src.recv(65536):
                if request and self._mode == "cut-reads" and self._matches(chunk):
                    doomed.set()
                elif not request and doomed.is_set():
                    dst.sendall(chunk[:CUT_AFTER])
                    with self._lock:
                        self.refused += 1
                    _abort(dst)
                    _abort(src)
                    return
                dst.sendall(chunk)
                if not request:
                    self._passed(len(chunk))
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with self._lock:
                    self._open.discard(sock)
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
