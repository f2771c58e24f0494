"""A stand-in for Kaggle's API on 127.0.0.1, spoken to by the real ``kaggle`` client (2.2.5).

With ``KAGGLE_API_ENVIRONMENT=LOCALHOST`` the client POSTs JSON to ``http://localhost/api/v1/<Service>/<Method>``;
``HTTP_PROXY=http://127.0.0.1:PORT`` in the client's environment brings those requests here, with absolute URIs in
the request line. Downloads answer 302 to a file URL, then the file with Content-Length (and byte ranges).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

API = "/api/v1/"
SERVICE = API + "competitions.CompetitionApiService/"


@dataclass
class FakeCompetition:
    files: dict[str, bytes]
    rules_accepted: bool = True
    bundle: bytes | None = None  # what DownloadDataFiles serves as <slug>.zip


@dataclass
class FakeKaggle:
    username: str = "tester"
    key: str = "secret-key"
    competitions: dict[str, FakeCompetition] = field(default_factory=dict)
    #: file names whose next transfer is cut off half-way (once each)
    cut_off: set[str] = field(default_factory=set)
    #: how many ListSubmissions calls answer PENDING before COMPLETE
    pending_polls: int = 1
    public_score: str = "0.812"
    log: list[str] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)
    submissions: list[dict] = field(default_factory=list)
    #: "owner/slug" → {"versions": [{"files": {name: bytes}, "notes": str, "request": dict}], "polls": int}
    datasets: dict[str, dict] = field(default_factory=dict)
    #: "owner/slug" → {"versions": [SaveKernel request body], "polls": int}
    kernels: dict[str, dict] = field(default_factory=dict)
    #: how many GetDatasetStatus / GetKernelSessionStatus calls answer a working state before the end state
    processing_polls: int = 1
    #: how a pushed kernel's session ends, and the failure message Kaggle gives with ERROR
    kernel_outcome: str = "COMPLETE"
    kernel_failure: str = ""
    #: the files a finished kernel's session lists as its output
    kernel_output: dict[str, bytes] = field(default_factory=dict)

    def start(self) -> FakeKaggle:
        fake = self
        self.blob_names: dict[str, str] = {}

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean; requests are recorded in fake.log
                pass

            def _send(self, status: int, body: bytes = b"", headers: dict | None = None):
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status: int, obj: dict):
                self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json"})

            def _authorised(self) -> bool:
                auth = self.headers.get("Authorization", "")
                expected = base64.b64encode(f"{fake.username}:{fake.key}".encode()).decode()
                return auth in (f"Basic {expected}", f"Bearer {fake.key}")

            def do_POST(self):
                path = urlparse(self.path).path
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                fake.log.append(f"POST {path}")
                if not path.startswith(API):
                    return self._json(404, {"code": 404, "message": "no such service"})
                if not self._authorised():
                    return self._json(401, {"code": 401, "message": "Unauthenticated"})
                if not path.startswith(SERVICE):
                    service, _, method = path[len(API):].partition("/")
                    handler = getattr(self, f"_{service.split('.')[0]}_{method}", None)
                    if handler is None:
                        return self._json(404, {"code": 404, "message": f"no method {service}/{method}"})
                    return handler(body)
                method = path[len(SERVICE):]
                name = body.get("competitionName", "")
                comp = fake.competitions.get(name)
                if comp is None:
                    return self._json(404, {"code": 404, "message": f"Competition {name} not found"})
                if not comp.rules_accepted and method != "ListSubmissions":
                    return self._json(403, {"code": 403, "message": "You must accept this competition's rules"})
                handler = getattr(self, f"_{method}", None)
                if handler is None:
                    return self._json(404, {"code": 404, "message": f"no method {method}"})
                return handler(name, comp, body)

            def _ListDataFiles(self, name, comp, body):
                files = [{"name": n, "totalBytes": len(b), "creationDate": "2019-06-27T00:00:00Z"}
                         for n, b in comp.files.items()]
                self._json(200, {"files": files, "nextPageToken": ""})

            def _DownloadDataFiles(self, name, comp, body):
                self._send(302, headers={"Location": f"http://localhost/files/{name}/{name}.zip"})

            def _DownloadDataFile(self, name, comp, body):
                file_name = body.get("fileName", "")
                if file_name not in comp.files:
                    return self._json(404, {"code": 404, "message": f"file {file_name} not found"})
                self._send(302, headers={"Location": f"http://localhost/files/{name}/{file_name}"})

            def _StartSubmissionUpload(self, name, comp, body):
                token = f"token-{len(fake.uploads) + 1}"
                fake.uploads[token] = b""
                self._json(200, {"token": token, "createUrl": f"http://localhost/upload/{token}"})

            def _CreateSubmission(self, name, comp, body):
                token = body.get("blobFileTokens")
                if token not in fake.uploads or not fake.uploads[token]:
                    return self._json(400, {"code": 400, "message": "no uploaded file for this token"})
                ref = 1000 + len(fake.submissions)
                fake.submissions.append({"ref": ref, "fileName": "submission.csv", "date": "2026-11-25T00:00:00Z",
                                         "description": body.get("submissionDescription", ""), "polls": 0,
                                         "content": fake.uploads[token]})
                self._json(200, {"message": "Successfully submitted", "ref": ref})

            def _ListSubmissions(self, name, comp, body):
                out = []
                for s in reversed(fake.submissions):
                    s["polls"] += 1
                    done = s["polls"] > fake.pending_polls
                    out.append({"ref": s["ref"], "fileName": s["fileName"], "date": s["date"],
                                "description": s["description"], "status": "COMPLETE" if done else "PENDING",
                                "publicScore": fake.public_score if done else "", "privateScore": ""})
                self._json(200, {"submissions": out, "nextPageToken": ""})

            def _CreateCodeSubmission(self, name, comp, body):
                kernel = f"{body.get('kernelOwner')}/{body.get('kernelSlug')}"
                if kernel not in fake.kernels:
                    return self._json(404, {"code": 404, "message": f"kernel {kernel} not found"})
                ref = 1000 + len(fake.submissions)
                fake.submissions.append({"ref": ref, "fileName": body.get("fileName", ""),
                                         "date": "2026-11-25T00:00:00Z",
                                         "description": body.get("submissionDescription", ""), "polls": 0,
                                         "kernel": kernel, "kernelVersion": body.get("kernelVersion"),
                                         "content": None})
                self._json(200, {"message": "Your submission was queued", "ref": ref})

            # ---- blobs, datasets, kernels -----------------------------------------------------------------
            def _blobs_StartBlobUpload(self, body):
                token = f"blob-{len(fake.uploads) + 1}"
                fake.uploads[token] = b""
                fake.blob_names[token] = body.get("name", "")
                self._json(200, {"token": token, "createUrl": f"http://localhost/upload/{token}"})

            def _uploaded(self, files):
                tokens = [f.get("token") for f in files or []]
                if not tokens or any(not fake.uploads.get(tok) for tok in tokens):
                    return None
                return {fake.blob_names[tok]: fake.uploads[tok] for tok in tokens}

            def _datasets_GetDatasetStatus(self, body):
                ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
                dataset = fake.datasets.get(ref)
                if dataset is None:
                    return self._json(404, {"code": 404, "message": f"dataset {ref} not found"})
                dataset["polls"] += 1
                ready = dataset["polls"] > fake.processing_polls
                self._json(200, {"status": "READY" if ready else "BLOBS_RECEIVED"})

            def _datasets_CreateDataset(self, body):
                ref = f"{body.get('ownerSlug')}/{body.get('slug')}"
                if body.get("ownerSlug") != fake.username:
                    return self._json(403, {"code": 403, "message": f"you may not create datasets for {ref}"})
                files = self._uploaded(body.get("files"))
                if files is None:
                    return self._json(400, {"code": 400, "message": "a file token was never uploaded"})
                fake.datasets[ref] = {"versions": [{"files": files, "notes": "", "request": body}], "polls": 0}
                self._json(200, {"ref": ref, "url": f"https://www.kaggle.com/datasets/{ref}", "status": "ok",
                                 "error": ""})

            def _datasets_CreateDatasetVersion(self, body):
                ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
                if ref not in fake.datasets:
                    return self._json(404, {"code": 404, "message": f"dataset {ref} not found"})
                files = self._uploaded((body.get("body") or {}).get("files"))
                if files is None:
                    return self._json(400, {"code": 400, "message": "a file token was never uploaded"})
                dataset = fake.datasets[ref]
                dataset["versions"].append({"files": files, "notes": body["body"].get("versionNotes", ""),
                                            "request": body})
                dataset["polls"] = 0
                self._json(200, {"ref": ref, "url": f"https://www.kaggle.com/datasets/{ref}", "status": "ok",
                                 "error": ""})

            def _kernels_SaveKernel(self, body):
                ref = body.get("slug", "")
                missing = [s for s in body.get("datasetDataSources", []) if s not in fake.datasets]
                if missing:
                    return self._json(200, {"ref": ref, "error": "", "invalidDatasetSources": missing})
                kernel = fake.kernels.setdefault(ref, {"versions": [], "polls": 0})
                kernel["versions"].append(body)
                kernel["polls"] = 0
                self._json(200, {"ref": ref, "url": f"https://www.kaggle.com/code/{ref}",
                                 "versionNumber": len(kernel["versions"]), "error": ""})

            def _kernel(self, body):
                return f"{body.get('userName')}/{body.get('kernelSlug')}", \
                    fake.kernels.get(f"{body.get('userName')}/{body.get('kernelSlug')}")

            def _kernels_GetKernelSessionStatus(self, body):
                ref, kernel = self._kernel(body)
                if kernel is None:
                    return self._json(404, {"code": 404, "message": f"kernel {ref} not found"})
                kernel["polls"] += 1
                if kernel["polls"] <= fake.processing_polls:
                    return self._json(200, {"status": "RUNNING"})
                self._json(200, {"status": fake.kernel_outcome, "failureMessage": fake.kernel_failure})

            def _kernels_ListKernelSessionOutput(self, body):
                ref, kernel = self._kernel(body)
                if kernel is None:
                    return self._json(404, {"code": 404, "message": f"kernel {ref} not found"})
                files = [{"fileName": n, "url": f"http://localhost/kernel-output/{ref}/{n}"}
                         for n in fake.kernel_output]
                self._json(200, {"files": files, "log": "[]", "nextPageToken": ""})

            def do_PUT(self):
                path = urlparse(self.path).path
                fake.log.append(f"PUT {path}")
                token = path.rsplit("/", 1)[-1]
                data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if token not in fake.uploads:
                    return self._send(404)
                fake.uploads[token] = data
                self._send(200)

            def do_GET(self):
                path = unquote(urlparse(self.path).path)
                fake.log.append(f"GET {path}")
                parts = path.split("/")
                if parts[1] == "kernel-output" and parts[-1] in fake.kernel_output:
                    return self._send(200, fake.kernel_output[parts[-1]], {
                        "Content-Type": "application/octet-stream", "Last-Modified": "Thu, 26 Nov 2026 00:00:00 GMT"})
                if len(parts) != 4 or parts[1] != "files" or parts[2] not in fake.competitions:
                    return self._send(404)
                comp, file_name = fake.competitions[parts[2]], parts[3]
                data = comp.bundle if file_name == f"{parts[2]}.zip" else comp.files.get(file_name)
                if data is None:
                    return self._send(404)
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                status = 206 if start else 200
                headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes",
                           "Last-Modified": "Thu, 27 Jun 2019 00:00:00 GMT", "ETag": f'"{len(data)}"'}
                if start:
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                body = data[start:]
                if file_name in fake.cut_off:
                    fake.cut_off.discard(file_name)
                    # Promise the whole file, send half, hang up: a transfer cut off mid-way.
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self._send(status, body, headers)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def client_env(self, home, key: str | None = None) -> dict:
        """Environment for a subprocess running the real client against this server."""
        env = {"KAGGLE_API_ENVIRONMENT": "LOCALHOST", "HTTP_PROXY": f"http://127.0.0.1:{self.port}",
               "http_proxy": f"http://127.0.0.1:{self.port}", "NO_PROXY": "", "no_proxy": "",
               "HOME": str(home), "KAGGLE_CONFIG_DIR": str(home / ".kaggle"),
               "KAGGLE_USERNAME": self.username, "KAGGLE_KEY": key or self.key}
        return env


def wait_for(predicate, timeout: float = 5.0) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False
