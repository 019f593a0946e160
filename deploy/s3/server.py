"""The local S3 server of docker-compose.local.yml: moto's S3 server, with its buckets kept on disk.

moto (the S3 server tests/test_object_store.py runs) keeps everything in memory, so a container
restart, or `docker compose down` then `up`, would lose the archive. This wrapper keeps a copy of
every object in a folder (a volume): each successful write or delete is mirrored there before the
response goes out, and at start-up the folder is loaded back into the server before it listens.

    python server.py --data /data --port 9000 [--bucket nowcast]

Kept: buckets and the bytes of each object. Not kept: object metadata, tags, ACLs, versions, unfinished
multipart uploads (S3 features the archive does not use). Requests are path-style (what s3fs sends to
an endpoint URL). Mutating requests are serialised, so the mirror is written in the order the server
applied them; reads run concurrently. moto checks no credentials: this is a stand-in for the
production object store (MinIO, in docker-compose.yml), for a single machine.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import quote, unquote
from xml.etree import ElementTree

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server
from werkzeug.test import EnvironBuilder, run_wsgi_app

MUTATING = {"PUT", "POST", "DELETE"}
#: what internal requests carry: a Host that moto routes to S3, and an Authorization header naming a
#: key (moto checks no signatures, but treats a request without one as anonymous: 403 on a private bucket)
INTERNAL_HEADERS = {
    "Host": "s3.amazonaws.com",
    "Authorization": "AWS4-HMAC-SHA256 Credential=internal/20200101/us-east-1/s3/aws4_request, "
                     "SignedHeaders=host, Signature=0",
}


def object_file(root: Path, bucket: str, key: str) -> Path:
    """One file per object, its name the quoted key (keys 'a' and 'a/b' can both exist)."""
    return root / bucket / quote(key, safe="")


class PersistentS3:
    """WSGI app: moto's S3 server, mirroring each applied change into ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.app = DomainDispatcherApplication(create_backend_app)
        self.write_lock = threading.Lock()

    # -- internal requests, straight into moto (no socket) ------------------------------------------
    def _call(self, method: str, path: str, body: bytes = b"", query: str = "") -> tuple[int, bytes]:
        environ = EnvironBuilder(method=method, path=path, query_string=query, data=body,
                                 headers=INTERNAL_HEADERS).get_environ()
        app_iter, status, _headers = run_wsgi_app(self.app, environ)
        try:
            data = b"".join(app_iter)
        finally:
            getattr(app_iter, "close", lambda: None)()
        return int(status.split()[0]), data

    def load(self) -> tuple[int, int]:
        """Put every kept bucket and object back into the (empty) server."""
        buckets = objects = 0
        for bucket_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            status, body = self._call("PUT", f"/{bucket_dir.name}")
            if status >= 300:
                raise RuntimeError(f"could not restore bucket {bucket_dir.name}: {status} {body[:200]!r}")
            buckets += 1
            for path in bucket_dir.iterdir():
                if path.name.startswith(".tmp-"):
                    path.unlink()  # a copy cut short by a kill: the object it was replacing is gone too
                    continue
                key = unquote(path.name)
                status, body = self._call("PUT", f"/{bucket_dir.name}/{quote(key)}", path.read_bytes())
                if status >= 300:
                    raise RuntimeError(f"could not restore {bucket_dir.name}/{key}: {status} {body[:200]!r}")
                objects += 1
        return buckets, objects

    # -- the mirror -------------------------------------------------------------------------------
    def _sync_key(self, bucket: str, key: str) -> None:
        status, body = self._call("GET", f"/{bucket}/{quote(key)}")
        target = object_file(self.root, bucket, key)
        if status == 200:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
            with os.fdopen(fd, "wb") as out:
                out.write(body)
            os.replace(tmp, target)
        elif status == 404:
            target.unlink(missing_ok=True)
        else:
            raise RuntimeError(f"could not read back {bucket}/{key}: {status}")

    def _mirror(self, method: str, path: str, query: str, body: bytes) -> None:
        parts = unquote(path).lstrip("/").split("/", 1)
        bucket, key = parts[0], (parts[1] if len(parts) > 1 else "")
        if not bucket or bucket == "moto-api":
            return
        params = {p.split("=", 1)[0] for p in query.split("&") if p}
        if not key:
            if method == "PUT" and not params:  # CreateBucket (not a bucket setting such as ?versioning)
                (self.root / bucket).mkdir(parents=True, exist_ok=True)
            elif method == "DELETE" and not params:  # DeleteBucket
                shutil.rmtree(self.root / bucket, ignore_errors=True)
            elif method == "POST" and "delete" in params:  # DeleteObjects: the keys are in the body
                for element in ElementTree.fromstring(body).iter():
                    if element.tag.rsplit("}", 1)[-1] == "Key" and element.text is not None:
                        self._sync_key(bucket, element.text)
            return
        if "partNumber" in params or "uploads" in params:
            return  # a part, or the start of a multipart upload: the object appears at completion
        if params & {"tagging", "acl", "retention", "legal-hold"}:
            return
        self._sync_key(bucket, key)  # PutObject, CopyObject, CompleteMultipartUpload, DeleteObject

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        if method not in MUTATING:
            return self.app(environ, start_response)
        length = environ.get("CONTENT_LENGTH")
        if length:
            body = environ["wsgi.input"].read(int(length))
        elif environ.get("wsgi.input_terminated"):  # chunked: the server ends the stream
            body = environ["wsgi.input"].read()
        else:
            body = b""
        environ["wsgi.input"] = io.BytesIO(body)  # moto reads it again
        seen: dict = {}

        def capture(status: str, headers: list, exc_info: object = None) -> Callable:
            seen["status"], seen["headers"], seen["exc_info"] = status, headers, exc_info
            return lambda data: None

        with self.write_lock:
            app_iter = self.app(environ, capture)
            try:
                data = b"".join(app_iter)
            finally:
                getattr(app_iter, "close", lambda: None)()
            if int(seen["status"].split()[0]) < 300:
                self._mirror(method, environ.get("PATH_INFO", "/"), environ.get("QUERY_STRING", ""), body)
        start_response(seen["status"], seen["headers"], seen["exc_info"])
        return [data]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/data"), help="folder the buckets are kept in")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--bucket", action="append", default=[], help="create this bucket if it is missing")
    args = parser.parse_args(argv)

    args.data.mkdir(parents=True, exist_ok=True)
    server_app = PersistentS3(args.data)
    started = time.monotonic()
    buckets, objects = server_app.load()
    for bucket in args.bucket:
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
            parser.error(f"not a bucket name: {bucket}")
        if not (args.data / bucket).is_dir():
            server_app._call("PUT", f"/{bucket}")
            (args.data / bucket).mkdir()
    print(f"s3: {buckets} bucket(s), {objects} object(s) loaded from {args.data} in "
          f"{time.monotonic() - started:.1f} s; listening on {args.host}:{args.port}", flush=True)

    server = make_server(args.host, args.port, server_app, threaded=True, request_handler=_QuietHandler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()
    print("s3: stopped", flush=True)
    return 0


class _QuietHandler(MotoRequestHandler):
    """Log errors only (a log line per chunk read would drown everything else)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if str(code).startswith("5"):
            super().log_request(code, size)


if __name__ == "__main__":
    sys.exit(main())
