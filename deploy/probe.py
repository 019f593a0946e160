"""Container healthchecks and the bucket set-up of the compose services (in the image at /app/deploy).

    python deploy/probe.py api [--url http://127.0.0.1:8000/readyz]
        the API answers /readyz with 200: its models are loaded and its store answers
    python deploy/probe.py store [--dir /incoming] [--writable /registry]
        the bucket of $NOWCAST_STORE answers a listing (credentials and endpoint from the environment);
        --dir: a folder that must be readable (the watched one); --writable: one that must take a file
    python deploy/probe.py make-bucket
        create the bucket of $NOWCAST_STORE if it is missing (where no MinIO client image is at hand)

Exit 0 when healthy, 1 with one line on stderr saying why not.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import urllib.error
import urllib.request


def bucket_of(store: str) -> str:
    if "://" not in store:
        raise SystemExit(f"NOWCAST_STORE={store!r} is not an object store URL")
    return store.split("://", 1)[1].split("/", 1)[0]


def filesystem(store: str):
    import fsspec

    # listings uncached, as pipelines.store opens every store: a cached one hides new keys
    return fsspec.filesystem(store.split("://", 1)[0], use_listings_cache=False)


def probe_api(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return None if response.status == 200 else f"{url}: {response.status}"
    except urllib.error.HTTPError as exc:
        return f"{url}: {exc.code} {exc.read()[:300].decode(errors='replace')}"
    except OSError as exc:
        return f"{url}: {exc}"


def probe_store(store: str, folder: str | None, writable: str | None) -> str | None:
    try:
        filesystem(store).ls(bucket_of(store), detail=False)
    except Exception as exc:  # any failure to list is unhealthy, said in one line
        return f"store {store}: {type(exc).__name__}: {exc}"
    if folder is not None:
        try:
            os.listdir(folder)
        except OSError as exc:
            return f"watched folder {folder}: {exc}"
    if writable is not None:
        try:
            with tempfile.NamedTemporaryFile(dir=writable, prefix=".probe-"):
                pass
        except OSError as exc:
            return f"{writable} is not writable: {exc}"
    return None


def make_bucket(store: str) -> str | None:
    fs, bucket = filesystem(store), bucket_of(store)
    if not fs.exists(bucket):
        fs.mkdir(bucket)
        print(f"created bucket {bucket}")
    else:
        print(f"bucket {bucket} is there")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="nowcast container probes")
    sub = parser.add_subparsers(dest="what", required=True)
    api = sub.add_parser("api")
    api.add_argument("--url", default="http://127.0.0.1:8000/readyz")
    store = sub.add_parser("store")
    store.add_argument("--dir")
    store.add_argument("--writable")
    sub.add_parser("make-bucket")
    args = parser.parse_args(argv)

    if args.what == "api":
        problem = probe_api(args.url)
    else:
        target = os.environ.get("NOWCAST_STORE", "")
        if args.what == "store":
            problem = probe_store(target, args.dir, args.writable)
        else:
            problem = make_bucket(target)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
