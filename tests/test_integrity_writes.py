"""Integrity of what the project writes besides the archive's frames (issue: integrity): the
verification ledger, the model store's promotion, checkpoint saves, and ingest on a full disk.
Real stores, real processes and real ``kill -9``; a real tmpfs filled up."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, nowcast_cli, sample_files

from nowcast.forecaster import load_forecaster
from nowcast.live_verification import VerificationLedger
from nowcast.model_store import ModelStore
from nowcast.promotion import PROMOTED, PromotionRule, promote
from pipelines.check import check_store
from pipelines.ingest import ingest
from pipelines.store import STAGING_GROUP, ProductArchive, archive_encoding, frames_to_dataset
from pipelines.synthetic import synthetic_frames
from pipelines.zarr_groups import require_group

LEADS = 3


# -- the verification ledger ------------------------------------------------------------------------


def test_a_truncated_verification_record_is_skipped_counted_and_the_next_pass_carries_on(tmp_path: Path) -> None:
    store = str(tmp_path / "ledger.zarr")
    ingest(sample_files("mch", 10), store, "mch", fmt="mch_gif", workers=1)
    archive, ledger = ProductArchive(store, "mch"), VerificationLedger(store, "mch")
    persistence = load_forecaster("persistence")
    times = archive.times()
    for k in range(len(times) - LEADS):
        for name in ("persistence", "other"):
            ledger.register(name, times[k], persistence.predict(archive.window(1, end=times[k]).frames, LEADS, 5.0),
                            5.0)
    ledger.verify()
    healthy = ledger.rolling(24)
    records = sorted((Path(store) / "_verification" / "mch" / "scores").glob("persistence/*/*/zarr.json"))
    damaged = records[2]
    damaged.write_bytes(damaged.read_bytes()[:40])

    answer = VerificationLedger(store, "mch").rolling(24)  # every model still answers
    unreadable = answer["unreadable_records"]
    assert unreadable["count"] == 1 and damaged.parent.name in unreadable["first"][0]
    by_model = {m["model"]: m for m in answer["models"]}
    before = {m["model"]: m for m in healthy["models"]}
    assert by_model["other"] == before["other"]
    assert (by_model["persistence"]["n_cases"] + by_model["persistence"]["n_dry_cases_skipped"]
            == before["persistence"]["n_cases"] + before["persistence"]["n_dry_cases_skipped"] - 1)
    # a further pass carries on past it; more frames, more records
    ingest(sample_files("mch", 12)[10:], store, "mch", fmt="mch_gif", workers=1)
    later = archive.times()
    ledger.register("persistence", later[-LEADS - 1],
                    persistence.predict(archive.window(1, end=later[-LEADS - 1]).frames, LEADS, 5.0), 5.0)
    done = nowcast_cli("verify", "--store", store, "--product", "mch")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "1 scored" in done.stderr or "1 dry" in done.stderr


# -- promotion ------------------------------------------------------------------------------------


def _fake_checkpoint(path: Path, model: str) -> Path:
    torch.save({"nowcast": {"model": model}, "state_dict": {}}, path)
    return path


def _scored_evaluate(scores: dict[str, float], barrier: threading.Barrier | None = None,
                     late: str | None = None):
    """An ``evaluate`` whose CSI per checkpoint is given (the archive and window are real). With
    ``barrier``, each promotion's first scoring waits for the other's: both score against the same
    production; ``late``'s then takes a moment longer, so the other decides first."""
    first_calls: set[str] = set()

    def evaluate(store, product, models, out, **_kwargs):
        candidate = Path(models[0]).parent.name.split("-", 1)[1]
        if barrier is not None and candidate not in first_calls:
            first_calls.add(candidate)
            barrier.wait(timeout=60)
            if candidate == late:
                time.sleep(1.0)
        entries = {}
        for i, model in enumerate(models):
            version = Path(model).parent.name  # a model store version; a baseline (optical flow) scores 0
            csi = scores[version.split("-", 1)[1]] if "-" in version else scores.get(model, 0.0)
            entries[f"m{i}"] = {"scores": [{"csi": {"1": csi}}]}
        return {"models": entries, "n_cases": 5}
    return evaluate


def test_two_racing_promotions_never_install_the_worse_model(tmp_path: Path, monkeypatch) -> None:
    store = str(tmp_path / "a.zarr")
    ProductArchive(store, "synth").write(synthetic_frames(n_frames=6, shape=(32, 32)))
    registry = ModelStore(tmp_path / "registry")
    scores = {"base": 0.20, "good": 0.278, "worse": 0.259}
    monkeypatch.setattr("nowcast.evaluate.evaluate", _scored_evaluate(scores))
    base = promote(registry, _fake_checkpoint(tmp_path / "base.ckpt", "base"), store, "synth")
    assert base[0] == PROMOTED
    barrier = threading.Barrier(2)
    monkeypatch.setattr("nowcast.evaluate.evaluate", _scored_evaluate(scores, barrier, late="worse"))
    decisions: dict[str, dict] = {}

    def run(name: str) -> None:
        decisions[name] = promote(registry, _fake_checkpoint(tmp_path / f"{name}.ckpt", name), store, "synth",
                                  PromotionRule())[1]

    threads = [threading.Thread(target=run, args=(name,)) for name in ("good", "worse")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert registry.meta(registry.production())["model"] == "good"
    assert decisions["good"]["promoted"]
    loser = decisions["worse"]
    assert not loser["promoted"] and loser["reason"] == "not better than production"
    # it lost the race, noticed, scored again against the new production, and says so
    assert loser["rescored_against"] == [decisions["good"]["candidate"]]
    assert loser["production_before"] == decisions["good"]["candidate"]


def _dry_model(checkpoint: Path, out: Path) -> Path:
    """The same network with its output layer zeroed: it forecasts no rain, so it scores below the original."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    for key in [k for k in state["state_dict"] if k.startswith("net.output.")]:
        state["state_dict"][key] = torch.zeros_like(state["state_dict"][key])
    torch.save(state, out)
    return out


def _has_open(pid: int, path: Path) -> bool:
    """True when process ``pid`` has ``path`` open (here: it is waiting for the lock in it)."""
    try:
        return any(os.path.realpath(f"/proc/{pid}/fd/{fd}") == os.path.realpath(path)
                   for fd in os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_two_racing_promote_processes_end_on_the_better_model_and_record_both(
        fmi_archive: str, small_checkpoint: Path, tmp_path: Path) -> None:
    from nowcast.model_store import PROMOTE_LOCK
    from nowcast.promotion import KEPT_PRODUCTION

    registry = ModelStore(tmp_path / "registry")
    checkpoints = {"good": small_checkpoint, "dry": _dry_model(small_checkpoint, tmp_path / "dry.ckpt")}
    nowcast = str(Path(sys.executable).with_name("nowcast"))
    procs = {}
    with registry.lock(PROMOTE_LOCK):  # both start and wait at the lock each promotion takes first
        for name, checkpoint in checkpoints.items():
            procs[name] = subprocess.Popen(
                [nowcast, "promote", "--checkpoint", str(checkpoint), "--registry", str(registry.root), "--store",
                 fmi_archive, "--product", "fmi", "--rule", str(REPO / "configs" / "promotion.yaml"),
                 "--window-hours", "0.5", "--crop", "128"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not all(_has_open(proc.pid, registry.root / PROMOTE_LOCK) for proc in procs.values()):
            assert time.monotonic() < deadline and all(proc.poll() is None for proc in procs.values()), \
                {name: proc.poll() for name, proc in procs.items()}
            time.sleep(0.05)
    # released: both find no production within a moment of each other, then score at the same time
    outputs = {name: proc.communicate(timeout=600) for name, proc in procs.items()}
    codes = {name: proc.returncode for name, proc in procs.items()}
    decisions = {name: json.loads(out) for name, (out, _) in outputs.items()}
    good, dry = decisions["good"], decisions["dry"]
    assert good["candidate_score"] > dry["candidate_score"]
    assert registry.production() == good["candidate"]  # whichever decided first
    # exactly one lost the race: it noticed production had moved, scored again against the winner, and says so
    if "rescored_against" in dry:  # good decided first: dry is kept out
        assert "rescored_against" not in good, good
        assert dry["rescored_against"] == [good["candidate"]] and dry["production_before"] == good["candidate"]
        assert codes == {"good": PROMOTED, "dry": KEPT_PRODUCTION} and not dry["promoted"], (codes, dry)
        loser = "dry"
    else:  # dry decided first: good scored again against it and replaced it
        assert good.get("rescored_against") == [dry["candidate"]], (good, dry)
        assert good["production_before"] == dry["candidate"] and good["promoted"]
        assert codes == {"good": PROMOTED, "dry": PROMOTED}, codes
        loser = "good"
    assert "while this candidate was scored; it was scored again against it" in outputs[loser][1]
    # both decisions are recorded in the model store, the promoted ones with the pointer's move confirmed
    for decision in decisions.values():
        meta = registry.meta(decision["candidate"])
        assert meta["scores"] and meta["promotion"]["promoted"] == decision["promoted"]
        assert meta["promotion"]["candidate_score"] == decision["candidate_score"]
        assert meta["promotion"].get("pointer_moved", False) is decision["promoted"]
    assert not list(registry.root.glob(".production.*"))


KILL_AFTER_POINTER_MOVE = """
import os, signal, sys
from pathlib import Path
import nowcast.model_store as ms
from test_integrity_writes import _scored_evaluate
import nowcast.evaluate
nowcast.evaluate.evaluate = _scored_evaluate({"base": 0.2, "good": 0.3})
original = ms.ModelStore.set_production
def set_and_die(self, version, expected=...):
    original(self, version, expected)
    with open(self.root / ".production.99999999.leftover.tmp", "w") as f:  # a killed write's temporary file
        f.write("x")
    os.kill(os.getpid(), signal.SIGKILL)
ms.ModelStore.set_production = set_and_die
from nowcast.promotion import promote
promote(ms.ModelStore(sys.argv[1]), sys.argv[2], sys.argv[3], "synth")
"""


def test_a_kill_right_after_the_pointer_moves_leaves_the_decision_recorded(tmp_path: Path) -> None:
    store = str(tmp_path / "a.zarr")
    ProductArchive(store, "synth").write(synthetic_frames(n_frames=6, shape=(32, 32)))
    registry = ModelStore(tmp_path / "registry")
    checkpoint = _fake_checkpoint(tmp_path / "good.ckpt", "good")
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_POINTER_MOVE, str(registry.root), str(checkpoint), store],
                            capture_output=True, text=True, cwd=Path(__file__).parent,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    version = registry.production()
    meta = registry.meta(version)
    assert meta["scores"] == [{"csi": {"1": 0.3}}]  # recorded before the pointer moved
    assert meta["promotion"]["promoted"] and meta["promotion"]["pointer_moved"] is False
    assert list(registry.root.glob(".production.*"))
    # the next promotion settles it and removes the leftover temporary file
    from nowcast.model_store import PROMOTE_LOCK
    from nowcast.promotion import settle_interrupted

    with registry.lock(PROMOTE_LOCK):
        done = settle_interrupted(registry)
    assert any("confirmed" in line for line in done)
    assert registry.meta(version)["promotion"]["pointer_moved"] is True
    assert not list(registry.root.glob(".production.*"))


# -- checkpoint saves -----------------------------------------------------------------------------

KILLING_IO = '''
import os, signal
from pathlib import Path
import torch
from nowcast.checkpoint_io import AtomicCheckpointIO

class KillingCheckpointIO(AtomicCheckpointIO):
    """Saves normally until the Nth save, which it leaves half-written, then kill -9."""
    def __init__(self, kill_at: int, count_file: str):
        super().__init__()
        self.kill_at, self.count_file = kill_at, Path(count_file)

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        n = int(self.count_file.read_text()) + 1 if self.count_file.exists() else 1
        self.count_file.write_text(str(n))
        if n == self.kill_at:
            target = Path(path)
            temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            torch.save(checkpoint, temporary)
            temporary.write_bytes(temporary.read_bytes()[:1000])
            os.kill(os.getpid(), signal.SIGKILL)
        super().save_checkpoint(checkpoint, path, storage_options)
'''


def test_kills_during_checkpoint_saves_leave_no_partial_or_untracked_files(tmp_path: Path) -> None:
    store = str(tmp_path / "synth.zarr")
    ProductArchive(store, "synth").write(synthetic_frames(n_frames=36, shape=(64, 64), seed=2))
    (tmp_path / "killing_io.py").write_text(KILLING_IO)
    run = tmp_path / "run" / "checkpoints"
    checkpoint = "pytorch_lightning.callbacks.ModelCheckpoint"

    def overrides(kill_at: int, epochs: int) -> Path:
        config = {
            # two training batches and one validation batch an epoch: the saves (two an epoch) are the
            # point, and there are as many of them, at the same moments, as with whole epochs
            "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": epochs, "enable_progress_bar": False,
                        "logger": False, "limit_train_batches": 2, "limit_val_batches": 1,
                        "plugins": [{"class_path": "killing_io.KillingCheckpointIO",
                                     "init_args": {"kill_at": kill_at, "count_file": str(tmp_path / "saves")}}],
                        "callbacks": [
                            {"class_path": checkpoint, "init_args": {
                                "dirpath": str(run), "filename": "{epoch:03d}", "monitor": "val/loss",
                                "mode": "min", "save_top_k": 2}},
                            {"class_path": checkpoint, "init_args": {
                                "dirpath": str(run), "filename": "last", "enable_version_counter": False}}]},
            "model": {"model_kwargs": {"hidden": [8], "kernel": 3, "patch": 2}},
            "data": {"store": store, "products": ["synth"], "t_in": 3, "t_out": 2, "crop": 32,
                     "min_rain_fraction": 0.0, "batch_size": 2, "num_workers": 0, "block_hours": 1,
                     "split_pattern": ["train", "val"]},
        }
        path = tmp_path / f"overrides-{kill_at}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    nowcast = str(Path(sys.executable).with_name("nowcast"))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    # saves per epoch: the top-k one, then last; kill in the middle of several of them, resuming each time
    for kill_at in (3, 6, 8, 11):
        (tmp_path / "saves").unlink(missing_ok=True)
        proc = subprocess.run([nowcast, "train", "--config", str(REPO / "configs" / "convlstm.yaml"), "--config",
                               str(overrides(kill_at, 8))], capture_output=True, text=True, cwd=tmp_path, env=env)
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    final = subprocess.run([nowcast, "train", "--config", str(REPO / "configs" / "convlstm.yaml"), "--config",
                            str(overrides(10_000, 10))], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert final.returncode == 0, final.stderr[-3000:]
    names = sorted(p.name for p in run.iterdir())
    assert not [n for n in names if n.endswith(".tmp")], names
    assert "last.ckpt" in names and len(names) <= 3, names  # save_top_k 2, plus last
    assert not [n for n in names if "-v" in n], names


# -- a full disk ----------------------------------------------------------------------------------


def _tmpfs(tmp_path: Path, size: str):
    """A real tmpfs of ``size`` (mount needs root or CAP_SYS_ADMIN: without it the test is skipped, saying so)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {made.stderr.decode()[:200]}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    yield from _tmpfs(tmp_path, "3m")


@pytest.fixture
def tmpfs_5m(tmp_path: Path):
    yield from _tmpfs(tmp_path, "5m")


def test_a_full_disk_during_ingest_is_one_paragraph_its_own_exit_and_a_summary(small_tmpfs: Path) -> None:
    store = str(small_tmpfs / "archive.zarr")
    files = sample_files("fmi", 40)
    result = nowcast_cli("ingest", *map(str, files), "--store", store, "--product", "fmi", "--format", "fmi_pgm",
                         "--batch-size", "4", "--json")
    assert result.returncode == 74, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr and "the disk is full" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["error"] == "disk_full" and summary["frames_committed"] > 0
    assert summary["frames_in_store"] == len(ProductArchive(store, "fmi").times())
    assert not (small_tmpfs / "archive.zarr" / "_staging" / "fmi").exists()
    # the batch that did not fit is released: no chunk past the committed frames holds space
    precip = small_tmpfs / "archive.zarr" / "fmi" / "precip"
    assert json.loads((precip / "zarr.json").read_text())["shape"][0] == summary["frames_in_store"]
    chunks = [path.relative_to(precip / "c") for path in (precip / "c").rglob("*") if path.is_file()]
    assert max(int(chunk.parts[0]) for chunk in chunks) == summary["frames_in_store"] - 1
    assert "uncommitted frame(s)" in summary["released"], summary
    # what was committed reads back whole
    assert nowcast_cli("store", "check", "--store", store).returncode == 0


def test_a_full_disk_during_an_out_of_order_merge_releases_the_journal(tmpfs_5m: Path) -> None:
    store = str(tmpfs_5m / "archive.zarr")
    files = sample_files("fmi", 20)
    ingest(files[10:], store, "fmi", fmt="fmi_pgm", workers=1)  # the later 10 frames: about 2.6 MB of the 5
    with ProductArchive(store, "fmi").open() as ds:
        committed = ds.load()
    used = shutil.disk_usage(tmpfs_5m).used
    # the earlier 10 arrive late: the merge's journal (20 frames, about 5.2 MB) cannot fit
    command = ("ingest", *map(str, files[:10]), "--store", store, "--product", "fmi", "--format", "fmi_pgm", "--json")
    result = nowcast_cli(*command)
    assert result.returncode == 74, (result.returncode, result.stderr[-3000:])
    errors = [line for line in result.stderr.splitlines() if not line.startswith("ingest fmi:")]  # progress lines
    assert len(errors) == 1 and errors[0].startswith("error: the disk is full"), result.stderr[-3000:]
    assert "no staging journal holds space" in errors[0]
    summary = json.loads(result.stdout)
    assert (summary["frames_committed"], summary["frames_in_store"]) == (0, 10)
    # the journal is released: its files are gone and its space is free again
    assert not (tmpfs_5m / "archive.zarr" / "_staging" / "fmi").exists()
    assert shutil.disk_usage(tmpfs_5m).used <= used + 64 * 1024, (used, shutil.disk_usage(tmpfs_5m).used)
    # the store reads as it did, and checks clean
    with ProductArchive(store, "fmi").open() as ds:
        after = ds.load()
    np.testing.assert_array_equal(after["time"].values, committed["time"].values)
    np.testing.assert_array_equal(after["precip"].values, committed["precip"].values)
    assert check_store(store)["status"] == "ok"
    # with room again, the same files merge in
    subprocess.run(["mount", "-o", "remount,size=20m", str(tmpfs_5m)], check=True)
    assert ingest(files[:10], store, "fmi", fmt="fmi_pgm", workers=1).inserted_out_of_order == 10
    times = ProductArchive(store, "fmi").times()
    assert len(times) == 20 and (np.diff(times.astype(np.int64)) > 0).all()
    assert not (tmpfs_5m / "archive.zarr" / "_staging" / "fmi").exists()


def test_what_a_cut_short_journal_deletion_leaves_is_removed_by_the_next_recovery(tmp_path: Path) -> None:
    store = str(tmp_path / "a.zarr")
    archive = ProductArchive(store, "synth")
    frames = synthetic_frames(n_frames=8, shape=(32, 32))
    archive.write(frames[4:])
    # a real merge journal, incomplete, whose deletion stopped right after its zarr.json went (rmtree's
    # order is the directory's): no group any more, so only its keys say it is there
    late = frames_to_dataset(frames[:4], "synth")[["precip"]]
    late.attrs = {"insert_at": 0, "complete": False}
    require_group(archive._root_store, STAGING_GROUP)
    archive._to_zarr(late, archive._staging_store, mode="w", encoding=archive_encoding(late))
    journal = tmp_path / "a.zarr" / STAGING_GROUP / "synth"
    (journal / "zarr.json").unlink()
    assert archive.journal_left() is None and list(journal.rglob("c/*"))
    assert archive.recover() == "removed what was left of a discarded staging journal"
    assert not journal.exists() and archive.recover() is None
    assert len(archive.times()) == 4
