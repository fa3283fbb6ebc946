"""A TCP proxy on loopback that can make the service behind it fail, then heal.

``fail("reset")`` aborts every open connection and answers new ones with a TCP reset; ``fail("503")`` answers
every new request with ``503 Service Unavailable`` (S3's ``SlowDown`` error) and closes. ``heal()`` passes
traffic through again. Counts what it refused, so a test can prove the fault was seen.
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
MODES = ("reset", "503")


def _abort(sock: socket.socket) -> None:
    """Close with a TCP RST (linger 0), as a crashed server or a dropped load balancer would."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
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

    def fail(self, mode: str = "reset") -> None:
        """Start failing: drop the open connections and refuse new ones the ``mode`` way."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        with self._lock:
            self._mode = mode
            doomed, self._open = self._open, set()
        for sock in doomed:
            _abort(sock)
        log.info("proxy :%s failing (%s)", self.port, mode)

    def heal(self) -> None:
        with self._lock:
            self._mode = None
        log.info("proxy :%s healed after refusing %s connections", self.port, self.refused)

    def close(self) -> None:
        self._closed = True
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
            if mode is not None:
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
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

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

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
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
