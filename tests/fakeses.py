"""A tiny SESv2-compatible HTTP endpoint for the cases moto_server cannot produce:
throttling, 5xx, chosen error codes, latency. It records what it accepted.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Failure:
    status: int
    code: str
    message: str = "scripted failure"


class FakeSES:
    def __init__(self, sock: socket.socket | None = None) -> None:
        """On port 0, or on *sock*, a bound socket (conftest.held_port) whose port the
        relay was already given: an endpoint that was down comes up where it was."""
        self.script: deque[Failure] = deque()
        # Optional rule: the failure for call number N (1-based), or None to accept it.
        self.rule: Callable[[int], Failure | None] | None = None
        self.accepted: list[dict[str, Any]] = []
        self.templated: list[dict[str, Any]] = []  # template sends, single and bulk
        self.reject_in_bulk: set[str] = set()
        # SES's account suppression list: served in pages of 2, and what was put into it.
        self.suppressed: list[tuple[str, str]] = []
        self.suppressed_put: list[tuple[str, str]] = []
        self.account: dict[str, Any] | None = None  # GetAccount's answer; None: 404
        self.calls = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                fake._handle(self, body)

            def do_GET(self) -> None:
                if self.path.startswith("/v2/email/suppression/addresses"):
                    fake._suppression_get(self)
                elif self.path.startswith("/v2/email/account") and fake.account:
                    fake._reply(self, 200, json.dumps(fake.account).encode())
                else:  # GetAccount and the rest: not implemented, as in moto
                    fake._reply(self, 404, b'{"message": "not implemented here"}')

            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = json.loads(body)
                with fake._lock:
                    fake.suppressed_put.append((request["EmailAddress"], request["Reason"]))
                fake._reply(self, 200, b"{}")

            def log_message(self, *args: object) -> None:
                pass

        if sock is None:
            self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        else:  # http.server's documented way to take over the socket
            self.server = ThreadingHTTPServer(sock.getsockname(), Handler,
                                              bind_and_activate=False)
            self.server.socket.close()
            self.server.socket = sock
            self.server.server_activate()
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeSES:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _suppression_get(self, req: BaseHTTPRequestHandler) -> None:
        from urllib.parse import parse_qs, urlsplit

        query = parse_qs(urlsplit(req.path).query)
        start = int(query.get("NextToken", ["0"])[0])
        page = self.suppressed[start:start + 2]
        body: dict[str, Any] = {"SuppressedDestinationSummaries": [
            {"EmailAddress": a, "Reason": r, "LastUpdateTime": 1790000000.0} for a, r in page]}
        if start + 2 < len(self.suppressed):
            body["NextToken"] = str(start + 2)
        self._reply(req, 200, json.dumps(body).encode())

    @staticmethod
    def _reply(req: BaseHTTPRequestHandler, status: int, payload: bytes) -> None:
        req.send_response(status)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(payload)))
        req.end_headers()
        req.wfile.write(payload)

    def _bulk(self, request: dict[str, Any]) -> bytes:
        results = []
        for entry in request["BulkEmailEntries"]:
            to = entry["Destination"]["ToAddresses"]
            data = entry["ReplacementEmailContent"]["ReplacementTemplate"][
                "ReplacementTemplateData"]
            if any(a in self.reject_in_bulk for a in to):
                results.append({"Status": "MESSAGE_REJECTED", "Error": "Address rejected"})
                continue
            message_id = f"fake-{uuid.uuid4()}"
            with self._lock:
                self.templated.append({"id": message_id, "from": request["FromEmailAddress"],
                                       "to": to, "TemplateName": request["DefaultContent"][
                                           "Template"]["TemplateName"],
                                       "TemplateData": data, "bulk": True,
                                       **self._ses_options(request, "DefaultEmailTags")})
            results.append({"Status": "SUCCESS", "MessageId": message_id})
        return json.dumps({"BulkEmailEntryResults": results}).encode()

    @staticmethod
    def _ses_options(request: dict[str, Any], tags: str) -> dict[str, Any]:
        """A template send's configuration set, tags and sending authorisation ARN."""
        return {"configuration_set": request.get("ConfigurationSetName"),
                "tags": {t["Name"]: t["Value"] for t in request.get(tags, [])},
                "from_arn": request.get("FromEmailAddressIdentityArn")}

    def fail_next(self, *failures: Failure) -> None:
        with self._lock:
            self.script.extend(failures)

    def _handle(self, req: BaseHTTPRequestHandler, body: bytes) -> None:
        with self._lock:
            self.calls += 1
            failure = self.script.popleft() if self.script else None
            if failure is None and self.rule is not None:
                failure = self.rule(self.calls)
        if failure is not None:
            payload = json.dumps({"message": failure.message}).encode()
            req.send_response(failure.status)
            req.send_header("x-amzn-ErrorType", failure.code)
        elif req.path.endswith("/outbound-bulk-emails"):
            payload = self._bulk(json.loads(body))
            req.send_response(200)
        elif "Template" in json.loads(body).get("Content", {}):
            request = json.loads(body)
            message_id = f"fake-{uuid.uuid4()}"
            with self._lock:
                self.templated.append({"id": message_id, "from": request["FromEmailAddress"],
                                       "to": request["Destination"]["ToAddresses"],
                                       **request["Content"]["Template"],
                                       **self._ses_options(request, "EmailTags")})
            payload = json.dumps({"MessageId": message_id}).encode()
            req.send_response(200)
        else:
            request = json.loads(body)
            raw = base64.b64decode(request["Content"]["Raw"]["Data"])
            message_id = f"fake-{uuid.uuid4()}"
            with self._lock:
                self.accepted.append({"id": message_id, "from": request["FromEmailAddress"],
                                      "to": request["Destination"]["ToAddresses"], "raw": raw,
                                      "authorization": req.headers.get("Authorization", ""),
                                      "amz_date": req.headers.get("X-Amz-Date", ""),
                                      "body": body,
                                      "configuration_set": request.get("ConfigurationSetName"),
                                      "tags": {t["Name"]: t["Value"]
                                               for t in request.get("EmailTags", [])}})
            payload = json.dumps({"MessageId": message_id}).encode()
            req.send_response(200)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(payload)))
        req.end_headers()
        req.wfile.write(payload)
