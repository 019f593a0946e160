"""Live verification: every forecast made from the archive is scored once its leads are observed.

The ledger lives in the archive's store, beside the product, under ``_verification/<product>``:

- ``pending/<model>/<init>``: a forecast the service made from the archive, kept exactly as it
  was served (float32 mm/h, ``[lead, y, x]``, NaN = nodata) until the frames at its leads are
  ingested. Its data are written first, then its ``complete`` flag; an incomplete one is never
  scored (a later request rewrites it).
- ``scores/<model>/<YYYYMMDD>/<init>``: one record per (model, init time), where ``<model>`` is the
  forecaster's identity (name@weights fingerprint, ``nowcast.forecaster.model_identity``): a group whose
  attributes hold the case's additive sums (``LeadTimeVerifier.state``), or why it is not scored
  (a dry init frame, as ``nowcast evaluate`` skips it; observations that never came). A record
  is one key, written atomically, and writing it again replaces it: a case is counted once,
  whatever is repeated or killed.
- attribute ``sources`` of ``_verification/<product>``: backfill stores whose done init times are
  verified the same way, read from the store rather than copied.
- ``pending_probability/<model>/<init>`` and ``probability_scores/<model>/<YYYYMMDD>/<init>``: the same
  for exceedance-probability forecasts (``[lead, threshold, y, x]`` in 0..1, the thresholds in the
  attributes), scored with ``ProbabilisticVerifier`` (Brier score and ROC area per threshold, pysteps'
  probscores) into records of their own, so that a model's deterministic and probability forecasts of
  one init time, kept at different times, never rewrite each other's record. ``rolling`` adds their
  scores to the same rows (``brier``, ``roc_area`` and ``crps`` per lead).

A pass (``verify``) writes the record of every forecast whose observations are all in, then
drops the pending forecast (flagged incomplete first, so a half-deleted one is never read): a
kill between the two only makes the next pass write the same record again. ``rolling`` pools
the records of a time window. Cases, the dry rule and the scores are ``nowcast evaluate``'s,
so the two agree on the same cases.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from nowcast.cases import archive_layout, is_dry, pixel_size_km
from nowcast.forecast_store import (
    PROBABILITY_VARIABLE,
    check_made_from,
    done_init_times,
    open_forecast_store,
    stored_thresholds,
)
from nowcast.probabilistic_verification import ProbabilisticVerifier
from nowcast.verification import LeadTimeVerifier
from pipelines.grid import Grid
from pipelines.integrity import DamagedRecord
from pipelines.query import parse_utc, utc_text
from pipelines.store import ProductArchive, open_zarr_store
from pipelines.zarr_groups import require_group

LEDGER_GROUP = "_verification"
#: how long past its last lead a forecast waits for missing observations before it is given up
DEFAULT_GRACE_MINUTES = 120.0
#: outcomes of one case, as its record's ``status``
SCORED, DRY, MISSING, WAITING = "scored", "dry", "missing_observations", "waiting"
#: the kinds of forecast kept, and the folders of each: (pending forecasts, score records)
DETERMINISTIC, PROBABILITY = "deterministic", "probability"
TREES = {DETERMINISTIC: ("pending", "scores"), PROBABILITY: ("pending_probability", "probability_scores")}
INIT_FORMAT = "%Y%m%dT%H%M%S"
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}")
_NOT_THERE = (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError)
#: records and forecasts named in a warning or an answer when unreadable; the rest are counted
MAX_NAMED = 5
log = logging.getLogger(__name__)


def _children(zstore: Any, prefix: str) -> list[str]:
    """Names under ``prefix`` from the store's listing: not by parsing each child's metadata
    (zarr's ``groups()``), so one damaged record cannot hide, or fail, the others."""
    async def names() -> list[str]:
        return sorted({name.rstrip("/") async for name in zstore.list_dir(prefix)} - {"zarr.json"})

    try:
        return zarr.core.sync.sync(names())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _node_attrs(zstore: Any, path: str) -> dict[str, Any] | None:
    """The attributes of the node at ``path`` (None when absent); DamagedRecord when its
    ``zarr.json`` does not parse."""
    raw = zarr.core.sync.sync(zstore.get(f"{path}/zarr.json", zarr.core.buffer.default_buffer_prototype()))
    if raw is None:
        return None
    try:
        return dict(json.loads(raw.to_bytes()).get("attributes") or {})
    except (ValueError, AttributeError) as exc:
        raise DamagedRecord(f"unreadable verification record {path}/zarr.json: {exc}") from exc


def split_identity(identity: str) -> tuple[str, str | None]:
    """``convlstm@1a2b3c4d5e6f`` -> (``convlstm``, ``1a2b3c4d5e6f``); a bare name has no fingerprint."""
    name, at, fingerprint = identity.rpartition("@")
    return (name, fingerprint) if at and name and fingerprint else (identity, None)


def model_key(name: str) -> str:
    """The model's name as a key in the store; names that are not plain (paths, '=') are hashed."""
    if _SAFE_NAME.fullmatch(name):
        return name
    return "m-" + hashlib.sha1(name.encode()).hexdigest()[:16]


def init_key(init: np.datetime64) -> str:
    return np.datetime64(init, "s").item().strftime(INIT_FORMAT)


def _parse_init_key(key: str) -> np.datetime64 | None:
    """``init_key`` read back; None for a name that is not one."""
    try:
        return np.datetime64(datetime.strptime(key, INIT_FORMAT), "s")
    except ValueError:
        return None


@dataclass
class PassResult:
    """What one ``verify`` pass did, per outcome."""

    scored: int = 0
    dry: int = 0
    missing_observations: int = 0
    waiting: int = 0
    #: cases whose kept forecast or record could not be read: skipped (and logged), the pass goes on.
    #: Not a field: summaries (``dataclasses.asdict``) keep their four outcomes.
    unreadable = 0

    def count(self, outcome: str) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)


@dataclass
class _Case:
    model: str
    init: np.datetime64
    n_leads: int
    read: Callable[[], np.ndarray]  # the forecast [n_leads, y, x] in mm/h
    done: Callable[[], None] = lambda: None  # called once its record is written
    current: Callable[[], bool] = lambda: True  # still the forecast listed (not replaced by a longer one)
    source: str = "service"
    kind: str = DETERMINISTIC  # PROBABILITY: read() gives [n_leads, threshold, y, x] in 0..1
    thresholds: tuple[float, ...] = ()  # mm/h, a probability forecast's


class VerificationLedger:
    """Forecasts awaiting their observations and the scores of those verified, for one product."""

    def __init__(self, store: str, product: str, storage_options: dict | None = None,
                 grace_minutes: float = DEFAULT_GRACE_MINUTES):
        self.store, self.product = str(store), product
        self.storage_options = storage_options
        self.grace_minutes = float(grace_minutes)
        self._zstore = open_zarr_store(self.store, storage_options)
        self._root = f"{LEDGER_GROUP}/{product}"
        self._held: set[tuple[str, str, str, int]] = set()  # (kind, model, init, leads) already registered here

    # -- the store --------------------------------------------------------------------------
    def _open(self, path: str = "") -> zarr.Group | None:
        try:
            return zarr.open_group(self._zstore, path=self._join(path), mode="r", zarr_format=3,
                                   use_consolidated=False)
        except _NOT_THERE:
            return None

    def _require(self, path: str = "") -> zarr.Group:
        return require_group(self._zstore, self._join(path))

    def _join(self, path: str) -> str:
        return f"{self._root}/{path}" if path else self._root

    def exists(self) -> bool:
        return self._open() is not None

    # -- registering forecasts ----------------------------------------------------------------
    def register(self, model: str, init: np.datetime64, forecast: np.ndarray, step_minutes: float) -> bool:
        """Keep a forecast made from the archive at ``init`` until it can be verified. ``model`` is
        the forecaster's identity (``LoadedForecaster.identity``: name@fingerprint), so two networks
        that share a name are recorded and scored apart.

        Returns False, writing nothing, when this (model, init) is already held with as many leads
        or more (pending or scored): the service answers the same forecast many times."""
        forecast = np.asarray(forecast, dtype=np.float32)
        if forecast.ndim != 3 or forecast.shape[0] < 1:
            raise ValueError(f"a forecast is [lead, y, x]; got shape {forecast.shape}")
        return self._keep(DETERMINISTIC, model, init, forecast, {"step_minutes": float(step_minutes)})

    def register_probabilities(self, model: str, init: np.datetime64, probabilities: np.ndarray,
                               thresholds: Sequence[float], step_minutes: float,
                               members: int | None = None) -> bool:
        """Keep an exceedance-probability forecast made from the archive at ``init``: ``probabilities``
        [lead, threshold, y, x], P(rate >= threshold) in 0..1, NaN = nodata; ``members`` it was counted
        over (None: the model's own probabilities). Scored once observed, like ``register``'s forecasts,
        into a record of its own; False, writing nothing, when as many leads or more are already held."""
        probabilities = np.asarray(probabilities, dtype=np.float32)
        thresholds = [float(t) for t in thresholds]
        if probabilities.ndim != 4 or probabilities.shape[0] < 1 or probabilities.shape[1] != len(thresholds):
            raise ValueError(f"probabilities are [lead, threshold ({len(thresholds)}), y, x]; got shape "
                             f"{probabilities.shape}")
        return self._keep(PROBABILITY, model, init, probabilities,
                          {"step_minutes": float(step_minutes), "thresholds": thresholds, "members": members})

    def _keep(self, kind: str, model: str, init: np.datetime64, forecast: np.ndarray, attrs: dict[str, Any]) -> bool:
        leads = forecast.shape[0]
        key = (kind, model, init_key(init), leads)
        if key in self._held or self.held_leads(model, init, kind) >= leads:
            self._held.add(key)
            return False
        pending = self._require(f"{TREES[kind][0]}/{model_key(model)}")
        chunks = (1, *forecast.shape[1:-2], *forecast.shape[-2:])
        array = pending.create_array(
            init_key(init), shape=forecast.shape, dtype="float32", chunks=chunks, fill_value=np.nan,
            compressors=(BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"), Crc32cCodec()), overwrite=True,
            attributes={"model": model, "init_time": utc_text(init), **attrs, "complete": False})
        array[...] = forecast
        array.attrs.update({"complete": True})  # data first, then the flag: never a half-written forecast
        self._held.add(key)
        return True

    def held_leads(self, model: str, init: np.datetime64, kind: str = DETERMINISTIC) -> int:
        """Leads of this (model, init) already recorded or pending complete; 0 when neither."""
        record = self._record(model, init, kind)
        held = int(record.get("n_leads", 0)) if record else 0
        pending = self._open(f"{TREES[kind][0]}/{model_key(model)}")
        if pending is not None:
            try:
                array = pending[init_key(init)]
            except KeyError:
                return held
            if array.attrs.get("complete") is True:
                held = max(held, int(array.shape[0]))
        return held

    def add_source(self, path: str) -> None:
        """Verify a backfill forecast store's init times as its observations come in."""
        path = path if "://" in path else str(Path(path).resolve())
        group = self._require()
        sources = list(group.attrs.get("sources", []))
        if path not in sources:
            group.attrs.update({"sources": [*sources, path]})

    def sources(self) -> list[str]:
        group = self._open()
        return list(group.attrs.get("sources", [])) if group is not None else []

    # -- records --------------------------------------------------------------------------------
    def _record_path(self, model: str, init: np.datetime64, kind: str = DETERMINISTIC) -> tuple[str, str]:
        day = np.datetime_as_string(np.datetime64(init, "D")).replace("-", "")
        return f"{TREES[kind][1]}/{model_key(model)}/{day}", init_key(init)

    def _record(self, model: str, init: np.datetime64, kind: str = DETERMINISTIC) -> dict[str, Any] | None:
        """A case's record; None when absent or unreadable (then it is scored again and rewritten)."""
        folder, name = self._record_path(model, init, kind)
        try:
            return _node_attrs(self._zstore, self._join(f"{folder}/{name}"))
        except DamagedRecord as exc:
            log.warning("%s: scored again, and rewritten", exc)
            return None

    def _write_record(self, model: str, init: np.datetime64, attrs: dict[str, Any], kind: str = DETERMINISTIC
                      ) -> None:
        """One key (the record group's zarr.json), written whole; a second write replaces it."""
        folder, name = self._record_path(model, init, kind)
        self._require(folder).create_group(name, attributes=attrs, overwrite=True)

    def _unchanged(self, folder: str, name: str, n_leads: int) -> bool:
        """``folder`` (``pending/<model>``, or ``pending_probability/<model>``) still holds this forecast."""
        group = self._open(folder)
        try:
            array = group[name] if group is not None else None
        except KeyError:
            return False
        return array is not None and array.attrs.get("complete") is True and array.shape[0] == n_leads

    def _drop(self, folder: str, name: str) -> None:
        """Delete a verified pending forecast: flagged incomplete first, so a delete cut short by a
        kill leaves nothing that a pass would read as a forecast."""
        group = self._require(folder)
        try:
            group[name].attrs.update({"complete": False})
            del group[name]
        except KeyError:
            pass  # another verifier dropped it

    # -- verifying ------------------------------------------------------------------------------
    def pending_count(self) -> dict[str, int]:
        """Init times per model with a complete pending forecast (deterministic, probability or both)."""
        waiting = {(case.model, init_key(case.init)) for kind in TREES for case in self._pending_cases(kind)}
        counts: dict[str, int] = {}
        for model, _ in waiting:
            counts[model] = counts.get(model, 0) + 1
        return counts

    def _pending_cases(self, kind: str = DETERMINISTIC) -> Iterator[_Case]:
        """Complete pending forecasts of one kind; one whose metadata cannot be read is skipped (logged)."""
        tree = TREES[kind][0]
        for folder in _children(self._zstore, self._join(tree)):
            per_model = self._open(f"{tree}/{folder}")
            if per_model is None:
                continue
            for name in _children(self._zstore, self._join(f"{tree}/{folder}")):
                init = _parse_init_key(name)
                if init is None:
                    continue
                try:
                    array = per_model[name]
                    attrs = dict(array.attrs)
                except KeyError:
                    continue
                except Exception as exc:  # a damaged zarr.json: this forecast only
                    log.warning("unreadable pending forecast %s/%s/%s/%s skipped: %s", self._root, tree, folder,
                                name, exc)
                    continue
                if attrs.get("complete") is not True or not isinstance(array, zarr.Array):
                    continue
                where = f"{tree}/{folder}"
                yield _Case(attrs["model"], init, int(array.shape[0]), read=lambda a=array: a[...],
                            done=lambda w=where, n=name: self._drop(w, n),
                            current=lambda w=where, n=name, k=int(array.shape[0]): self._unchanged(w, n, k),
                            kind=kind, thresholds=tuple(float(t) for t in attrs.get("thresholds", ())))

    def _source_cases(self, step: float, grid: Grid, opened: contextlib.ExitStack) -> Iterator[_Case]:
        """Done init times of the registered backfill stores that have no record yet, their forecasts
        and (``--threshold``) their probabilities (the stores stay open in ``opened`` until read)."""
        for path in self.sources():
            try:
                ds = opened.enter_context(open_forecast_store(path))
                check_made_from(path, ds, self.product, self.store, step, grid)
            except (FileNotFoundError, ValueError):
                continue  # moved, deleted or remade from another product since: nothing to verify from it
            model = str(ds.attrs.get("model_identity") or ds.attrs["model"])  # older stores: the name alone
            index = {t: i for i, t in enumerate(ds["init_time"].values.astype("datetime64[s]"))}
            n_leads = ds.sizes["lead_time"]
            thresholds = stored_thresholds(ds)
            kinds = {DETERMINISTIC: "precip", **({PROBABILITY: PROBABILITY_VARIABLE} if thresholds else {})}
            for kind, variable in kinds.items():
                recorded = self._recorded_inits(model, kind)
                for init in done_init_times(ds):
                    if init_key(init) in recorded:
                        continue
                    yield _Case(model, init, n_leads, source=path, kind=kind,
                                thresholds=thresholds if kind == PROBABILITY else (),
                                read=lambda i=index[init], d=ds, v=variable: d[v].isel(init_time=i).values)

    def _recorded_inits(self, model: str, kind: str = DETERMINISTIC) -> set[str]:
        """Init keys with a readable record (an unreadable one is scored again, so a rerun mends it)."""
        folder = self._join(f"{TREES[kind][1]}/{model_key(model)}")
        recorded = set()
        for day in _children(self._zstore, folder):
            for name in _children(self._zstore, f"{folder}/{day}"):
                try:
                    if _node_attrs(self._zstore, f"{folder}/{day}/{name}") is not None:
                        recorded.add(name)
                except DamagedRecord as exc:
                    log.warning("%s: scored again, and rewritten", exc)
        return recorded

    def verify(self, on_case: Callable[[str, str], None] | None = None,
               lock: contextlib.AbstractContextManager | None = None) -> PassResult:
        """Score every forecast whose observations are all in the archive; give up on those whose
        observations are still missing ``grace_minutes`` after their last lead.

        ``lock`` is held around each case (the service's, so that a forecast being kept is never
        rewritten while it is read), not around the whole pass."""
        lock = lock if lock is not None else contextlib.nullcontext()
        result = PassResult()
        archive = ProductArchive(self.store, self.product, self.storage_options)
        if not self.exists() or not archive.exists():
            return result
        times, grid, step = archive_layout(archive)
        seconds = times.astype("datetime64[s]").astype(np.int64)
        index = {int(t): i for i, t in enumerate(seconds)}
        newest = int(seconds[-1])
        km = pixel_size_km(grid)
        with contextlib.ExitStack() as opened:
            precip = opened.enter_context(archive.open())["precip"]
            for case in self._cases(step, grid, opened):
                with lock:
                    try:
                        self._verify_case(case, precip, index, newest, step, km, result, on_case)
                    except Exception as exc:  # damaged forecast, record or frame: this case only
                        result.count("unreadable")
                        log.warning("verification of %s's %s forecast of %s skipped: %s", case.model,
                                    utc_text(case.init), self.product, exc)
        return result

    def _cases(self, step: float, grid: Grid, opened: contextlib.ExitStack) -> Iterator[_Case]:
        """Pending service forecasts (deterministic, then probabilities), then backfilled init times not
        also pending."""
        seen = set()
        for kind in TREES:
            for case in self._pending_cases(kind):
                seen.add((kind, case.model, init_key(case.init)))
                yield case
        for case in self._source_cases(step, grid, opened):
            if (case.kind, case.model, init_key(case.init)) not in seen:
                yield case

    def _verify_case(self, case: _Case, precip: Any, index: dict[int, int], newest: int, step: float, km: float,
                     result: PassResult, on_case: Callable[[str, str], None] | None) -> None:
        """Write ``case``'s record when its observations are all in (or given up on), then drop it."""
        if not case.current():  # replaced since it was listed: the next pass verifies the new one
            result.count(WAITING)
            return
        step_s = int(round(step * 60))
        t0 = int(np.datetime64(case.init, "s").astype(np.int64))
        wanted = [index.get(t0 + k * step_s) for k in range(case.n_leads + 1)]  # the init frame, then each lead's
        name, fingerprint = split_identity(case.model)
        base = {"model": name, "identity": case.model, "fingerprint": fingerprint,
                "init_time": utc_text(case.init), "n_leads": case.n_leads, "step_minutes": step, "source": case.source,
                **({"kind": PROBABILITY, "thresholds": list(case.thresholds)} if case.kind == PROBABILITY else {})}
        if None in wanted:
            if newest < t0 + case.n_leads * step_s + self.grace_minutes * 60:
                result.count(WAITING)
                return
            outcome, record = MISSING, {**base, "status": MISSING}
        else:
            observed = precip.isel(time=wanted).values
            if is_dry(observed[0]):  # evaluate's rule: no case from a dry init frame
                outcome, record = DRY, {**base, "status": DRY}
            elif case.kind == PROBABILITY:  # Brier score and ROC area at its thresholds (no members: no CRPS)
                verifier = ProbabilisticVerifier(case.n_leads, step, case.thresholds)
                verifier.accumulate(observed[1:], probabilities=case.read())
                outcome, record = SCORED, {**base, "status": SCORED, "sums": verifier.state()}
            else:
                verifier = LeadTimeVerifier(case.n_leads, step, km)
                verifier.accumulate(case.read(), observed[1:])
                outcome, record = SCORED, {**base, "status": SCORED, "sums": verifier.state()}
        self._write_record(case.model, case.init, record, case.kind)
        case.done()
        result.count(outcome)
        if on_case:
            on_case(case.model, outcome)

    # -- reading scores -------------------------------------------------------------------------
    def rolling(self, hours: float, end: Any = None) -> dict[str, Any]:
        """Scores pooled over the records whose init time lies in ``(end - hours, end]``; ``end``
        defaults to the product's newest frame (so an archive replayed from the past reads alike)."""
        if hours <= 0:
            raise ValueError(f"hours must be positive, got {hours:g}")
        archive = ProductArchive(self.store, self.product, self.storage_options)
        last = parse_utc(end) if end is not None else None
        if last is None:
            times = archive.times() if archive.exists() else np.array([], dtype="datetime64[s]")
            last = times[-1].astype("datetime64[s]") if len(times) else None
        answer: dict[str, Any] = {"product": self.product, "hours": hours, "start": None,
                                  "end": utc_text(last) if last is not None else None, "models": []}
        if last is None or all(self._open(tree) is None for _, tree in TREES.values()):
            answer["pending"] = self.pending_count()
            return answer
        first = last - np.timedelta64(int(round(hours * 3600)), "s")
        answer["start"] = utc_text(first)
        days = {np.datetime_as_string(d).replace("-", "")
                for d in np.arange(first.astype("datetime64[D]"), last.astype("datetime64[D]") + 1)}
        unreadable: list[str] = []
        per_model: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for kind, (_, tree) in TREES.items():
            folder = self._join(tree)
            for model_dir in _children(self._zstore, folder):
                records = per_model.setdefault(model_dir, {k: [] for k in TREES})[kind]
                for day in sorted(days & set(_children(self._zstore, f"{folder}/{model_dir}"))):
                    for name in _children(self._zstore, f"{folder}/{model_dir}/{day}"):
                        if not _in_window(name, first, last):
                            continue
                        try:  # an unreadable record is skipped and counted; the rest are pooled
                            attrs = _node_attrs(self._zstore, f"{folder}/{model_dir}/{day}/{name}")
                        except DamagedRecord:
                            unreadable.append(f"{'' if kind == DETERMINISTIC else tree + ':'}{model_dir}/{day}/{name}")
                            continue
                        if attrs is not None and "model" in attrs:
                            records.append(attrs)
        for model_dir in sorted(per_model):
            kinds = per_model[model_dir]
            if kinds[DETERMINISTIC] or kinds[PROBABILITY]:
                answer["models"].append(_pool(kinds[DETERMINISTIC], kinds[PROBABILITY]))
        _name_shared_rows(answer["models"])
        answer["models"].sort(key=lambda m: m["model"])
        answer["pending"] = self.pending_count()
        if unreadable:
            answer["unreadable_records"] = {"count": len(unreadable), "first": unreadable[:MAX_NAMED]}
        return answer


def _name_shared_rows(rows: list[dict[str, Any]]) -> None:
    """Rows are per identity; where two share a name each shows its identity (name@fingerprint)
    as its ``model``, so that no reader takes two networks for one."""
    names = [row["model"] for row in rows]
    for row in rows:
        if names.count(row["model"]) > 1:
            row["model"] = row["identity"]


def _in_window(name: str, first: np.datetime64, last: np.datetime64) -> bool:
    init = _parse_init_key(name)
    return init is not None and first < init <= last


def _pool(records: list[dict[str, Any]], probability_records: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """One model's records pooled: its scores per lead, and how many cases each outcome had (an init time
    once, whether its deterministic forecast, its probabilities or both were kept). Probability records
    add ``brier``, ``roc_area`` and ``crps`` to the rows of the same leads (``_add_probabilistic``)."""
    everything = [*records, *probability_records]
    scored = sorted((r for r in records if r.get("status") == SCORED), key=lambda r: r["init_time"])
    inits = sorted(r["init_time"] for r in everything)
    identity = str(everything[0].get("identity") or everything[0]["model"])  # older records: their name

    def outcomes(status: str) -> int:
        return len({r["init_time"] for r in everything if r.get("status") == status})

    out: dict[str, Any] = {"model": everything[0]["model"], "identity": identity,
                           "fingerprint": split_identity(identity)[1], "n_cases": 0,
                           "n_dry_cases_skipped": outcomes(DRY), "n_missing_observations": outcomes(MISSING),
                           "n_other_settings": 0, "first_init": inits[0], "last_init": inits[-1], "scores": []}
    if scored:
        sums = [r["sums"] for r in scored]
        n_leads = max(len(s["n_cases"]) for s in sums)
        # pooled on the newest record's thresholds, FSS window and step: records counted with
        # others (an older release, a regridded product) cannot be added, and are counted apart
        verifier = LeadTimeVerifier.like(sums[-1], n_leads)
        out["n_cases"], others = _merge_compatible(verifier, sums)
        out["n_other_settings"] += others
        out["scores"] = verifier.result()
    _add_probabilistic(out, sorted((r for r in probability_records if r.get("status") == SCORED),
                                   key=lambda r: r["init_time"]))
    return out


def _merge_compatible(verifier: Any, sums: list[dict[str, Any]]) -> tuple[int, int]:
    """Add each record's sums that ``verifier`` can pool with its settings; (how many were, how many
    were counted with other settings and are left out)."""
    merged = 0
    for state in sums:
        if verifier.compatible(state):
            verifier.merge_state(state)
            merged += 1
    return merged, len(sums) - merged


def _add_probabilistic(out: dict[str, Any], scored: list[dict[str, Any]]) -> None:
    """Pool a model's scored probability records (on the newest one's bins and step, at every threshold
    any of them has) into ``brier``, ``roc_area`` and ``crps`` (null: no members were kept) per lead of
    ``out["scores"]``, and ``n_probabilistic_cases``; leads with no deterministic case get empty rows."""
    if not scored:
        return
    sums = [r["sums"] for r in scored]
    newest = sums[-1]

    def same_settings(state: dict) -> bool:
        return (state["n_bins"] == newest["n_bins"] and state["n_roc"] == newest["n_roc"]
                and abs(float(state["step_minutes"]) - float(newest["step_minutes"])) < 1e-9)

    thresholds = sorted({float(t) for state in sums if same_settings(state) for t in state["thresholds"]})
    n_leads = max(len(state["n_cases"]) for state in sums)
    verifier = ProbabilisticVerifier(n_leads, newest["step_minutes"], thresholds, newest["n_bins"], newest["n_roc"])
    out["n_probabilistic_cases"], others = _merge_compatible(verifier, sums)
    out["n_other_settings"] += others
    rows = out["scores"]
    if len(rows) < n_leads:  # leads only probabilities were kept for: no deterministic score there
        rows.extend(LeadTimeVerifier(n_leads, newest["step_minutes"], 1.0).result()[len(rows):])
    for row, scores in zip(rows, verifier.result(), strict=False):
        row.update({"n_probabilistic_cases": scores["n_cases"], "brier": scores["brier"],
                    "roc_area": scores["roc_area"], "crps": scores["crps"]})


def open_ledgers(store: str, storage_options: dict | None = None,
                 grace_minutes: float = DEFAULT_GRACE_MINUTES) -> list[VerificationLedger]:
    """The ledger of every product that has one in ``store``."""
    zstore = open_zarr_store(store, storage_options)
    names = [name for name in _children(zstore, LEDGER_GROUP) if not name.startswith(".")]
    return [VerificationLedger(store, name, storage_options, grace_minutes) for name in names]


def verify_store(store: str, product: str | None = None, storage_options: dict | None = None,
                 grace_minutes: float = DEFAULT_GRACE_MINUTES,
                 on_case: Callable[[str, str], None] | None = None) -> dict[str, PassResult]:
    """One pass over every ledger of ``store`` (or ``product``'s): what ``nowcast verify`` runs."""
    ledgers = open_ledgers(store, storage_options, grace_minutes)
    if product is not None:
        ledgers = [ledger for ledger in ledgers if ledger.product == product]
    return {ledger.product: ledger.verify(on_case) for ledger in ledgers}
