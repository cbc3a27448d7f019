"""A stand-in for SESv2's export jobs (Message Insights) and the S3 download behind their
pre-signed URL, on loopback: moto 5.2 has no CreateExportJob/GetExportJob.

It speaks the REST JSON of the botocore service model: POST /v2/email/export-jobs,
GET /v2/email/export-jobs/{JobId}; a completed job's ExportDestination.S3Url points at
this server's /exports/ path, which serves the records as JSON Lines. Like SES it exports
at most MaxResults (≤ 10,000) records per job and says nothing about the others.
"""

from __future__ import annotations

import datetime
import json
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Job:
    id: str
    start: float
    end: float
    max_results: int
    request: dict[str, Any]
    polls_left: int  # GetExportJob answers PROCESSING this many times first


class FakeInsights:
    def __init__(self) -> None:
        self.records: list[tuple[float, dict[str, Any]]] = []
        self.jobs: list[Job] = []
        self.processing_polls = 1  # for the first job: the importer must wait for it
        self.fail: str | None = None  # every job FAILED with this ErrorMessage
        self.downloads = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/v2/email/export-jobs":
                    fake._reply(self, 200, fake._create(json.loads(body)))
                else:
                    fake._reply(self, 404, {"message": "not here"})

            def do_GET(self) -> None:
                if self.path.startswith("/v2/email/export-jobs/"):
                    fake._get(self, self.path.rsplit("/", 1)[1])
                elif self.path.startswith("/exports/"):
                    fake._download(self, self.path.split("/")[2].split(".")[0])
                else:
                    fake._reply(self, 404, {"message": "not here"})

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeInsights:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add(self, n: int, start: float, span: float, prefix: str = "m") -> list[str]:
        """*n* messages sent evenly over [start, start + span); their MessageIds."""
        ids = []
        with self._lock:
            for i in range(n):
                at = start + span * i / n
                mid = f"{prefix}-{i:06d}-{uuid.uuid4().hex[:8]}"
                ids.append(mid)
                self.records.append((at, record(mid, f"{prefix}{i}@example.net", at)))
        return ids

    def _create(self, request: dict[str, Any]) -> dict[str, Any]:
        source = request["ExportDataSource"]["MessageInsightsDataSource"]
        assert request["ExportDestination"]["DataFormat"] in ("JSON", "CSV")
        with self._lock:
            job = Job(uuid.uuid4().hex, float(source["StartDate"]), float(source["EndDate"]),
                      min(int(source.get("MaxResults", 10_000)), 10_000), request,
                      self.processing_polls if not self.jobs else 0)
            self.jobs.append(job)
        return {"JobId": job.id}

    def _matching(self, job: Job) -> list[dict[str, Any]]:
        # StartDate and EndDate are both inclusive (the service model says so).
        with self._lock:
            found = sorted((r for r in self.records if job.start <= r[0] <= job.end),
                           key=lambda r: r[0])
        return [r for _, r in found]

    def _get(self, req: BaseHTTPRequestHandler, job_id: str) -> None:
        job = next((j for j in self.jobs if j.id == job_id), None)
        if job is None:
            self._reply(req, 404, {"message": "no such job"}, "NotFoundException")
            return
        answer: dict[str, Any] = {"JobId": job.id, "ExportSourceType": "MESSAGE_INSIGHTS",
                                  "ExportDataSource": job.request["ExportDataSource"],
                                  "CreatedTimestamp": job.start}
        if job.polls_left > 0:
            job.polls_left -= 1
            answer["JobStatus"] = "PROCESSING"
        elif self.fail:
            answer |= {"JobStatus": "FAILED", "FailureInfo": {"ErrorMessage": self.fail}}
        else:
            matched = len(self._matching(job))
            answer |= {"JobStatus": "COMPLETED",
                       "ExportDestination": {
                           "DataFormat": "JSON",
                           "S3Url": f"{self.url}/exports/{job.id}.json?X-Amz-Signature=fake"},
                       "Statistics": {"ProcessedRecordsCount": matched,
                                      "ExportedRecordsCount": min(matched, job.max_results)}}
        self._reply(req, 200, answer)

    def _download(self, req: BaseHTTPRequestHandler, job_id: str) -> None:
        job = next(j for j in self.jobs if j.id == job_id)
        body = "".join(json.dumps(r) + "\n"
                       for r in self._matching(job)[:job.max_results]).encode()
        with self._lock:
            self.downloads += 1
        req.send_response(200)
        req.send_header("Content-Type", "application/octet-stream")
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)

    @staticmethod
    def _reply(req: BaseHTTPRequestHandler, status: int, answer: dict[str, Any],
               error: str | None = None) -> None:
        payload = json.dumps(answer).encode()
        req.send_response(status)
        if error:
            req.send_header("x-amzn-ErrorType", error)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(payload)))
        req.end_headers()
        req.wfile.write(payload)


def record(message_id: str, destination: str, at: float) -> dict[str, Any]:
    """One exported Message Insights record (what the importer reads of it)."""
    when = datetime.datetime.fromtimestamp(at, datetime.UTC).isoformat()
    return {"messageId": message_id, "destination": destination, "isp": "Gmail",
            "sendTimestamp": when, "fromEmailAddress": "news@example.com",
            "lastDeliveryEvent": "DELIVERY", "lastEngagementEvent": "OPEN"}
