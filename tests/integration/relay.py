"""A byte-counting TCP relay for tests: the office link between a branch and central (issue 18).

``ByteRelay(target_port).start()`` listens on a loopback port and copies each accepted
connection to ``127.0.0.1:target_port`` and back, one thread per direction, counting the bytes
each way (TLS records: what would cross the WAN). ``stop()`` cuts the link: the listener and
every connection are closed, so new connections are refused; ``start()`` again listens on the
same port. ``reset()`` zeroes the counters.
"""

from __future__ import annotations

import socket
import threading


class ByteRelay:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.to_target = 0  # bytes from the branch to central
        self.to_client = 0  # bytes from central to the branch
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()

    def start(self) -> ByteRelay:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def reset(self) -> None:
        with self._lock:
            self.to_target = self.to_client = 0

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            try:
                target = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    target.close()
                    return
                self._sockets.update((client, target))
            threading.Thread(target=self._pump, args=(client, target, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(target, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, to_target: bool) -> None:
        try:
            while data := source.recv(65536):
                with self._lock:
                    if to_target:
                        self.to_target += len(data)
                    else:
                        self.to_client += len(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
