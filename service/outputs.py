"""What a forecast request asks for beyond one field: exceedance probabilities or ensemble members.

``"output": "probability"`` with ``"thresholds"`` (mm/h) answers P(rate >= threshold) per lead and
threshold; ``"output": "ensemble"`` with ``"members"`` answers the members. Each is checked here against
what the model offers (``outputs`` in GET /v1/models) and the service's limits, refused with a 422 that
names the limit (``max_thresholds``, ``max_members``, ``max_ensemble_values``): members x leads x pixels
is what one request holds in memory (twice, in float64, inside STEPS), and the batcher runs these
requests one at a time, so memory stays bounded whatever the traffic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from nowcast.probabilistic_verification import verification_thresholds
from service.errors import ApiError
from service.serving import ServedModel
from service.settings import ServiceSettings

OUTPUT_KINDS = ("deterministic", "probability", "ensemble")


@dataclass(frozen=True)
class OutputRequest:
    """A checked output: its kind, thresholds (probability) and members (None: the model's own way)."""

    kind: str = "deterministic"
    thresholds: tuple[float, ...] = ()
    members: int | None = None

    @property
    def deterministic(self) -> bool:
        return self.kind == "deterministic"

    @property
    def job(self) -> tuple:
        """What the micro-batcher groups and runs by (empty: a plain forecast)."""
        if self.kind == "ensemble":
            return ("ensemble", self.members)
        if self.kind == "probability":
            return ("probability", self.thresholds, self.members)
        return ()


def output_request(kind: str, thresholds: Sequence[float] | None, members: int | None, model: ServedModel,
                   settings: ServiceSettings) -> OutputRequest:
    """The request's output, checked against the model's ``outputs`` and the settings' limits."""
    if kind not in OUTPUT_KINDS:
        raise ApiError(422, "bad_output", f"output must be one of {', '.join(OUTPUT_KINDS)}, got {kind!r}")
    if kind == "deterministic":
        if thresholds or members is not None:
            raise ApiError(422, "bad_output", "'thresholds' go with \"output\": \"probability\" and 'members' with "
                                              "\"probability\" or \"ensemble\"")
        return OutputRequest()
    offered = model.forecaster.outputs
    if kind not in offered:
        raise ApiError(422, "output_not_offered", f"model {model.name!r} offers {', '.join(offered)} output, not "
                                                  f"{kind!r}; GET /v1/models lists each model's outputs")
    if members is not None and members < 1:
        raise ApiError(422, "bad_members", f"members must be at least 1, got {members}")
    if members is not None and members > settings.max_members:
        raise ApiError(422, "too_many_members", f"members {members} is over the limit max_members "
                                                f"({settings.max_members})")
    if kind == "ensemble":
        if thresholds:
            raise ApiError(422, "bad_output", "'thresholds' go with \"output\": \"probability\"")
        return OutputRequest("ensemble", (), members or settings.default_members)
    if not thresholds:
        raise ApiError(422, "missing_thresholds", "\"output\": \"probability\" needs 'thresholds': rain rates in "
                                                  "mm/h, e.g. [1, 5, 10]")
    if len(thresholds) > settings.max_thresholds:
        raise ApiError(422, "too_many_thresholds", f"{len(thresholds)} thresholds, over the limit max_thresholds "
                                                   f"({settings.max_thresholds})")
    bad = [t for t in thresholds if not math.isfinite(float(t)) or float(t) <= 0]
    if bad:
        raise ApiError(422, "bad_thresholds", f"thresholds must be rain rates above 0 mm/h, got {bad}")
    # members count the probabilities of a model that has them; one with its own probabilities ignores them
    counted = "ensemble" in offered
    return OutputRequest("probability", tuple(float(t) for t in thresholds),
                         (members or settings.default_members) if counted else None)


def _values(output: OutputRequest, lead_steps: int, pixels: int) -> int:
    """Values one request holds: members (or thresholds) x leads x pixels."""
    return max(output.members or 0, len(output.thresholds)) * lead_steps * pixels


def check_output_size(output: OutputRequest, lead_steps: int, pixels: int, settings: ServiceSettings) -> None:
    """Refuse, before any compute, a forecast whose members (or probabilities) would not fit the memory bound."""
    if output.deterministic:
        return
    values = _values(output, lead_steps, pixels)
    if values > settings.max_ensemble_values:
        what = f"{output.members} members" if output.members else f"{len(output.thresholds)} thresholds"
        raise ApiError(422, "ensemble_too_large", f"{what} x {lead_steps} leads x {pixels} pixels = {values} values, "
                                                  f"over the limit max_ensemble_values ({settings.max_ensemble_values})"
                                                  "; ask for fewer members, leads or a smaller bbox")


def with_verified_thresholds(output: OutputRequest, model: ServedModel, lead_steps: int, pixels: int,
                             settings: ServiceSettings) -> tuple[OutputRequest, tuple[float, ...]]:
    """A probability request to be kept for live verification, widened by the thresholds it is scored at
    (1, 5, 10 mm/h where the model offers them: ``verification_thresholds``), and those thresholds.

    The same model run gives them (the members already counted, or the network's survival function read
    at a few more levels), so every kept forecast is scored at the same thresholds whatever a client
    asked for; the client is answered its own. Not widened when that would pass ``max_ensemble_values``:
    then the thresholds kept are those asked for among them."""
    scored = verification_thresholds(model.forecaster)
    extra = tuple(t for t in scored if t not in output.thresholds)
    widened = OutputRequest("probability", output.thresholds + extra, output.members)
    if extra and _values(widened, lead_steps, pixels) > settings.max_ensemble_values:
        widened = output
    return widened, tuple(t for t in scored if t in widened.thresholds)
