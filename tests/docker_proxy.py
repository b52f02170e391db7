"""A Unix-socket proxy in front of the Docker engine that loses the engine's answer to the
first N container creations: the engine has made the container, the client sees the
connection drop (as after a ReadTimeout)."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
from pathlib import Path

ENGINE = "/var/run/docker.sock"


class LossyDockerProxy:
    def __init__(self, lose_creates: int) -> None:
        self.lose_creates = lose_creates
        self.creates = 0
        self._dir = tempfile.mkdtemp(prefix="expman-docker-proxy-")
        self.path = Path(self._dir) / "docker.sock"
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(self.path))
        self._server.listen(32)
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def close(self) -> None:
        self._server.close()
        self.path.unlink(missing_ok=True)
        os.rmdir(self._dir)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            engine.connect(ENGINE)
            lose = threading.Event()
            threading.Thread(target=self._upstream, args=(client, engine, lose), daemon=True).start()
            threading.Thread(target=self._downstream, args=(engine, client, lose), daemon=True).start()

    def _upstream(self, client: socket.socket, engine: socket.socket, lose: threading.Event) -> None:
        try:
            while data := client.recv(65536):
                if data.startswith(b"POST ") and b"/containers/create" in data.split(b"\r\n", 1)[0]:
                    with self._lock:
                        self.creates += 1
                        if self.lose_creates > 0:
                            self.lose_creates -= 1
                            lose.set()
                engine.sendall(data)
        except OSError:
            pass
        finally:
            engine.close()

    def _downstream(self, engine: socket.socket, client: socket.socket, lose: threading.Event) -> None:
        try:
            while data := engine.recv(65536):
                if lose.is_set():  # the engine answered; the client never hears it
                    break
                client.sendall(data)
        except OSError:
            pass
        finally:
            for end in (client, engine):  # the other thread's recv ends too
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            client.close()
