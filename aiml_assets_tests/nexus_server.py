"""A loopback stand-in for a Nexus 3 raw hosted repository, for tests.

It follows Nexus's documented raw-repository behaviour: PUT `/repository/<repo>/<path>` stores the bytes (201),
GET returns them (200) or 404, HEAD answers 200/404, and with the deployment policy "Disable redeploy" (the
default here, `allow_redeploy=False`) a PUT to an existing path is refused with 400. When credentials are
configured every request needs matching basic auth (401 otherwise). Unknown repositories are 404.

    with NexusServer(repositories=["aiml-models"], username="u", password="p") as server:
        HttpNexus(url=server.url, repository="aiml-models", username="u", password="p")
        server.files[("aiml-models", "m/1/model.bin")] = b"tampered"   # reach into storage directly
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


class NexusServer:
    def __init__(
        self,
        repositories: Iterable[str] = ("aiml-models",),
        username: str | None = None,
        password: str | None = None,
        allow_redeploy: bool = False,
    ):
        self.repositories = set(repositories)
        self.allow_redeploy = allow_redeploy
        self.files: dict[tuple[str, str], bytes] = {}  # (repository, path) -> bytes
        self.requests: list[tuple[str, str, int]] = []  # (method, request path, status), in order
        credentials = f"{username}:{password}".encode()
        self._auth = None if username is None else "Basic " + base64.b64encode(credentials).decode()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("NexusServer is not running")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> NexusServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="nexus-test-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = self._thread = None

    def __enter__(self) -> NexusServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def handle(self, method: str, request_path: str, authorization: str | None, body: bytes) -> tuple[int, str, bytes]:
        """(status, reason, body) for one request; called from the handler threads."""
        if self._auth is not None and authorization != self._auth:
            return 401, "Unauthorized", b""
        prefix, _, rest = urlsplit(request_path).path.lstrip("/").partition("/")
        repository, _, path = rest.partition("/")
        repository, path = unquote(repository), unquote(path)
        if prefix != "repository" or repository not in self.repositories:
            return 404, "Not Found", b""
        key = (repository, path)
        with self._lock:
            if method == "PUT":
                if not path or path.endswith("/"):
                    return 400, "Bad Request", b""
                if key in self.files and not self.allow_redeploy:
                    return 400, f"Repository does not allow updating assets: {repository}", b""
                self.files[key] = body
                return 201, "Created", b""
            if key not in self.files:
                return 404, "Not Found", b""
            return 200, "OK", self.files[key]


def _handler_for(server: NexusServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _respond(self, method: str) -> None:
            # Drain any request body first, so a refused upload never leaves the client writing to a closed socket.
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, reason, payload = server.handle(method, self.path, self.headers.get("Authorization"), body)
            server.requests.append((method, self.path, status))
            self.send_response(status, reason)
            if status == 401:
                self.send_header("WWW-Authenticate", 'BASIC realm="Sonatype Nexus Repository Manager"')
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if method == "GET":
                self.wfile.write(payload)

        def do_GET(self):
            self._respond("GET")

        def do_HEAD(self):
            self._respond("HEAD")

        def do_PUT(self):
            self._respond("PUT")

        def log_message(self, format, *args):  # keep test output quiet
            pass

    return Handler
