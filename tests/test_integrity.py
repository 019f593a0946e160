"""Damaged data is detected and named, never served; one bad file never blocks the rest (issue:
integrity). Real FMI radar in real Zarr stores, damaged on disk the way a bad disk or a killed
copy damages them: a flipped byte, a truncated chunk, a deleted chunk, a truncated ``zarr.json``."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import zarr
from conftest import nowcast_cli, sample_files, synthetic_training_config, train_command
from test_service import start_server

from pipelines.check import check_store
from pipelines.chunk_read import local_chunk_array
from pipelines.ingest import ingest
from pipelines.integrity import EXIT_DAMAGED, DamagedChunk, DamagedProduct
from pipelines.query import utc_text
from pipelines.store import ProductArchive, list_products

FRAME = 5  # the damaged frame
CHUNK = f"precip/c/{FRAME}/1/1"


def flip_byte(path: Path, offset: int = 40) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGES = {"flipped byte": flip_byte, "truncated": truncate, "deleted": Path.unlink}
REASONS = {"flipped byte": "checksum mismatch", "truncated": "checksum mismatch", "deleted": "missing"}


@pytest.fixture
def fmi_copy(fmi_archive: str, tmp_path: Path) -> str:
    """A private copy of the shared 24-frame FMI store, to damage."""
    store = str(tmp_path / "fmi.zarr")
    shutil.copytree(fmi_archive, store)
    return store


def reference_frames(store: str) -> tuple[np.ndarray, np.ndarray]:
    with ProductArchive(store, "fmi").open() as ds:
        return ds["time"].values.astype("datetime64[s]"), ds["precip"].values


def test_new_arrays_carry_a_checksum_and_every_chunk(fmi_archive: str) -> None:
    for name in ("precip", "time", "x", "y", "crs"):
        meta = json.loads((Path(fmi_archive) / "fmi" / name / "zarr.json").read_text())
        assert meta["codecs"][-1] == {"name": "crc32c"}, name
    chunks = list((Path(fmi_archive) / "fmi" / "precip" / "c").rglob("*"))
    shape = json.loads((Path(fmi_archive) / "fmi" / "precip" / "zarr.json").read_text())["shape"]
    assert len([c for c in chunks if c.is_file()]) == shape[0] * 5 * 3  # 1226 x 760 in 256 px tiles


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_chunk_is_an_error_naming_product_time_and_chunk(fmi_copy: str, damage: str) -> None:
    times, _ = reference_frames(fmi_copy)
    DAMAGES[damage](Path(fmi_copy) / "fmi" / CHUNK)
    archive = ProductArchive(fmi_copy, "fmi")
    expected = f"damaged data: product 'fmi' at {utc_text(times[FRAME])}, chunk {CHUNK}: {REASONS[damage]}"
    with pytest.raises(DamagedChunk) as through_zarr:
        archive.window(6, end=times[FRAME + 2])  # a forecast's inputs
    assert str(through_zarr.value).startswith(expected)
    assert through_zarr.value.time == utc_text(times[FRAME]) and through_zarr.value.key == CHUNK
    # the training path reads chunk files itself (pipelines.chunk_read): the same check, the same words
    fast = local_chunk_array(zarr.open_array(archive._zstore, path="precip", mode="r", zarr_format=3))
    with pytest.raises(DamagedChunk) as through_files:
        fast[FRAME - 1 : FRAME + 1, 200:600, 200:600]
    assert str(through_files.value).startswith(expected)
    # frames that do not touch the chunk read as before
    assert archive.window(4, end=times[FRAME - 1]).frames.shape[0] == 4


def test_store_check_names_each_damaged_frame_and_repair_lets_a_reingest_restore_it(fmi_copy: str) -> None:
    times, reference = reference_frames(fmi_copy)
    clean = nowcast_cli("store", "check", "--store", fmi_copy)
    assert clean.returncode == 0, clean.stderr
    flip_byte(Path(fmi_copy) / "fmi" / "precip" / "c" / "3" / "0" / "2")
    truncate(Path(fmi_copy) / "fmi" / CHUNK)
    (Path(fmi_copy) / "fmi" / "precip" / "c" / "9" / "2" / "0").unlink()
    found = nowcast_cli("store", "check", "--store", fmi_copy, "--json")
    assert found.returncode == EXIT_DAMAGED, found.stderr
    report = json.loads(found.stdout)
    assert report["status"] == "damaged" and report["damaged_products"] == ["fmi"]
    assert report["products"][0]["damaged_frames"] == 3
    for frame, key in ((3, "precip/c/3/0/2"), (FRAME, CHUNK), (9, "precip/c/9/2/0")):
        assert f"product 'fmi' at {utc_text(times[frame])}, {key}:" in found.stderr
    assert "Traceback" not in found.stderr

    repaired = nowcast_cli("store", "check", "--store", fmi_copy, "--repair")
    assert repaired.returncode == EXIT_DAMAGED and "dropped 3 damaged frame(s)" in repaired.stderr, repaired.stderr
    assert nowcast_cli("store", "check", "--store", fmi_copy).returncode == 0
    kept = ProductArchive(fmi_copy, "fmi").times()
    assert len(kept) == len(times) - 3 and times[FRAME] not in kept
    # re-ingesting the source files puts exactly those frames back, the same values
    ingest(sample_files("fmi", 24), fmi_copy, "fmi", fmt="fmi_pgm", workers=2)
    restored_times, restored = reference_frames(fmi_copy)
    np.testing.assert_array_equal(restored_times, times)
    np.testing.assert_array_equal(restored, reference)
    assert check_store(fmi_copy)["status"] == "ok"


def test_cleared_time_index_is_found_not_read_as_1970(fmi_copy: str) -> None:
    """The issue's "stored times all overwritten by the fill value": the time chunk gone."""
    (Path(fmi_copy) / "fmi" / "time" / "c" / "0").unlink()
    info = nowcast_cli("store", "info", "--store", fmi_copy)
    assert info.returncode == EXIT_DAMAGED
    assert "damaged data: product 'fmi'" in info.stderr and "time/c/0" in info.stderr, info.stderr
    assert "step 0.0" not in info.stdout
    assert check_store(fmi_copy)["status"] == "damaged"


@pytest.mark.parametrize("workers, debug", [(2, False), (0, True)], ids=["data-loader workers", "--debug"])
def test_training_on_a_damaged_chunk_stops_with_one_paragraph_naming_it(tmp_path: Path, workers: int,
                                                                         debug: bool) -> None:
    config = synthetic_training_config(tmp_path)  # a real 36-frame store, one 64 x 64 chunk per frame
    store = tmp_path / "synth.zarr"
    times = ProductArchive(str(store), "synth").times()
    flip_byte(store / "synth" / "precip" / "c" / "10" / "0" / "0")
    extra = ("--data.num_workers", str(workers), *(("--debug",) if debug else ()))
    done = subprocess.run(train_command(config, extra=extra), capture_output=True, text=True, cwd=tmp_path)
    named = f"damaged data: product 'synth' at {utc_text(times[10])}, chunk precip/c/10/0/0: checksum mismatch"
    if debug:  # the traceback, ending in the DamagedChunk (rich wraps its lines: compare without spaces)
        assert done.returncode == 1 and "Traceback" in done.stderr, done.stderr[-3000:]
        assert f"DamagedChunk:{named}".replace(" ", "") in "".join(done.stderr.split()), done.stderr[-3000:]
        return
    # through the workers the error arrives as text in a RuntimeError; still one paragraph, its own exit
    assert done.returncode == EXIT_DAMAGED, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr and "RuntimeError" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and named in errors[0], done.stderr[-3000:]
    assert "store check" in errors[0] and "--debug" in done.stderr.split(errors[0])[1]


@pytest.fixture
def two_products(tmp_path: Path) -> str:
    """FMI and MeteoSwiss in one store; MeteoSwiss's group zarr.json then cut in half."""
    store = str(tmp_path / "two.zarr")
    ingest(sample_files("fmi", 6), store, "fmi", fmt="fmi_pgm")
    ingest(sample_files("mch", 6), store, "mch", fmt="mch_gif")
    truncate(Path(store) / "mch" / "zarr.json")
    return store


def test_a_truncated_zarr_json_damages_its_product_only(two_products: str) -> None:
    assert list_products(two_products) == ["fmi", "mch"]
    with pytest.raises(DamagedProduct, match="damaged product 'mch': mch/zarr.json"):
        ProductArchive(two_products, "mch").exists()
    assert ProductArchive(two_products, "fmi").window(4).frames.shape[0] == 4

    info = nowcast_cli("store", "info", "--store", two_products, "--json")
    assert info.returncode == EXIT_DAMAGED, info.stderr
    summary = json.loads(info.stdout)
    assert [p["product"] for p in summary["products"]] == ["fmi"]
    assert summary["damaged"][0]["product"] == "mch" and "damaged product 'mch'" in info.stderr
    other = nowcast_cli("store", "info", "--store", two_products, "--product", "fmi")
    assert other.returncode == 0 and "Traceback" not in other.stderr
    itself = nowcast_cli("store", "info", "--store", two_products, "--product", "mch")
    assert itself.returncode == EXIT_DAMAGED and "damaged product 'mch'" in itself.stderr
    assert "no product" not in itself.stderr and "Traceback" not in itself.stderr
    # a writer must not take the damaged product for an uncommitted creation and drop it
    with pytest.raises(DamagedProduct):
        ingest(sample_files("mch", 7)[6:], two_products, "mch", fmt="mch_gif")
    assert (Path(two_products) / "mch" / "precip").is_dir()

    repaired = nowcast_cli("store", "check", "--store", two_products, "--repair")
    assert "mch/zarr.json rebuilt" in repaired.stderr, repaired.stderr
    assert check_store(two_products)["status"] == "ok"
    assert len(ProductArchive(two_products, "mch").times()) == 6


@pytest.fixture
def damaged_service(tmp_path: Path, two_products: str) -> Iterator[tuple[str, str]]:
    """A service on a store whose 'mch' metadata and one 'fmi' chunk are damaged."""
    times = ProductArchive(two_products, "fmi").times()
    flip_byte(Path(two_products) / "fmi" / "precip" / "c" / "2" / "1" / "1")
    for url in start_server(tmp_path, {"store": two_products, "models": ["persistence"], "verify_forecasts": False,
                                       "header_timeout_s": 1.0, "max_connections": 50}):
        yield url, utc_text(times[2])


def test_the_service_names_damage_and_keeps_serving_the_rest(damaged_service: tuple[str, str]) -> None:
    url, damaged_time = damaged_service
    ready = httpx.get(f"{url}/readyz", timeout=30)
    assert ready.status_code == 200, ready.text
    assert ready.json()["products"] == ["fmi"] and "mch" in ready.json()["damaged_products"]
    products = httpx.get(f"{url}/v1/products", timeout=60).json()
    assert [p["name"] for p in products["products"]] == ["fmi"]
    assert products["damaged"][0]["name"] == "mch"
    # a forecast from the damaged frame: a structured error naming it, never a forecast
    body = {"model": "persistence", "product": "fmi", "lead_steps": 2, "time": damaged_time}
    bad = httpx.post(f"{url}/v1/forecast", json=body, timeout=60)
    assert bad.status_code == 503 and bad.headers["content-type"].startswith("application/json"), bad.text
    error = bad.json()["error"]
    assert error["code"] == "damaged_data" and error["product"] == "fmi" and error["time"] == damaged_time
    assert error["chunk"] == "precip/c/2/1/1" and "checksum mismatch" in error["message"]
    # the latest frames are whole: served as before
    good = httpx.post(f"{url}/v1/forecast", json={**body, "time": None}, timeout=60)
    assert good.status_code == 200, good.text
    missing = httpx.get(f"{url}/v1/products/mch/times", timeout=30)
    assert missing.status_code == 503 and missing.json()["error"]["code"] == "damaged_data"


def test_a_client_dribbling_its_headers_is_disconnected(damaged_service: tuple[str, str]) -> None:
    url, _ = damaged_service
    host, port = url.removeprefix("http://").split(":")
    slow = []
    for _ in range(20):
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never the blank line
        slow.append(sock)
    started = time.monotonic()
    for sock in slow:
        sock.settimeout(10)
        try:
            closed = sock.recv(1024) == b""
        except ConnectionResetError:
            closed = True
        assert closed, "the server kept a slow-header connection open"
        sock.close()
    assert time.monotonic() - started < 8  # closed by the 1 s header timeout, not by the client
    # the cap: with max_connections (50 here) held open, one more request is refused at once with a 503
    held = [socket.create_connection((host, int(port)), timeout=10) for _ in range(50)]
    try:
        for sock in held:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        refused = httpx.get(f"{url}/healthz", timeout=10)
    finally:
        for sock in held:
            sock.close()
    assert refused.status_code == 503, refused.text
    deadline = time.monotonic() + 5  # and once the server has seen them close, it serves again
    while (status := httpx.get(f"{url}/healthz", timeout=10).status_code) != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status == 200
