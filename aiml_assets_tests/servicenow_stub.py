"""A loopback stand-in for ServiceNow's Table API (GET /api/now/table/change_request), answering in its documented
shape: {"result": [record, ...]}, fields as stored (sysparm_display_value=false), 401 without the basic-auth account."""

from __future__ import annotations

import base64
import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

USERNAME, PASSWORD = "svc-aiml-change-read", "stub-password"


@contextmanager
def servicenow(records: dict[str, dict]):
    """Serve `records` (change number -> record) on 127.0.0.1; yields the instance URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            url = urlsplit(self.path)
            expected = "Basic " + base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
            if self.headers.get("Authorization") != expected:
                return self._answer(401, {"error": {"message": "User Not Authenticated"}, "status": "failure"})
            if url.path != "/api/now/table/change_request":
                return self._answer(400, {"error": {"message": "Invalid table"}, "status": "failure"})
            query = parse_qs(url.query)
            number = query["sysparm_query"][0].removeprefix("number=")
            fields = query["sysparm_fields"][0].split(",")
            found = [{field: records[number].get(field, "") for field in fields}] if number in records else []
            self._answer(200, {"result": found})

        def _answer(self, status: int, body: dict):
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
