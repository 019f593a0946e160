"""What ``--model NAME`` means on the command line: a baseline, a shipped model or a checkpoint
file (``load_forecaster``), and beyond those the names a user has given trained models elsewhere:
a version (or ``production``) of the model store, or a ``label=path`` entry of a service config's
``models:`` list. So a model served as ``convlstm_rmi`` is evaluated and backfilled by that name.

Kept free of the service package (the service config is read as plain YAML): the service imports
this layer, never the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ResolvedModel:
    """What to load (``spec``, for ``load_forecaster``) and the name it was asked by (None: the
    loaded model's own name), and where that name was found."""

    spec: str
    name: str | None = None
    found_in: str | None = None


def service_config_models(config: str | Path) -> dict[str, str]:
    """The ``label=spec`` entries of a service config's ``models:`` list, label -> spec (a checkpoint
    path relative to the config's folder is taken relative to it when it is there, else to here)."""
    import yaml

    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"service config {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    named = {}
    for entry in data.get("models") or []:
        label, eq, spec = str(entry).partition("=")
        if not eq:
            continue
        beside = path.parent / spec
        named[label.strip()] = str(beside) if not Path(spec).is_absolute() and beside.is_file() else spec.strip()
    return named


def resolve_model(spec: str, registry: str | Path | None = None,
                  service_config: str | Path | None = None) -> ResolvedModel:
    """``spec`` as ``load_forecaster`` takes it, or looked up by name in the model store
    (``registry``: ``production`` or a version) and in ``service_config``'s ``models:`` labels.
    A name found nowhere raises FileNotFoundError listing every name that would have worked."""
    from nowcast.forecaster import WEIGHTS_DIR
    from nowcast.model_store import ModelStore
    from nowcast.models import BASELINES

    if spec in BASELINES or Path(spec).is_file() or (WEIGHTS_DIR / f"{spec}.ckpt").is_file():
        return ResolvedModel(spec)
    store = ModelStore(registry) if registry else None
    if store is not None:
        if spec == "production":
            checkpoint = store.production_checkpoint()
            if checkpoint is None:
                raise FileNotFoundError(f"model store {store.root} has no production version yet "
                                        "(nowcast promote makes one)")
            return ResolvedModel(str(checkpoint), None, f"model store {store.root}")
        if spec in store.list():
            return ResolvedModel(str(store.checkpoint(spec)), spec, f"model store {store.root}")
    labels = service_config_models(service_config) if service_config else {}
    if spec in labels:
        return ResolvedModel(labels[spec], spec, f"service config {service_config}")
    raise FileNotFoundError(_not_found(spec, store, labels, service_config))


def _not_found(spec: str, store, labels: dict[str, str], service_config: str | Path | None) -> str:
    from nowcast.forecaster import shipped_names
    from nowcast.models import BASELINES

    parts = [f"{spec!r} is not a model name or a checkpoint file. Names: baselines {', '.join(BASELINES)}; "
             f"shipped {', '.join(shipped_names())}"]
    if store is not None:
        versions = store.list()
        parts.append(f"model store {store.root}: production, " + (", ".join(versions[-5:]) if versions
                                                                 else "no versions"))
    else:
        parts.append("a model store's versions with --registry (or NOWCAST_REGISTRY)")
    if service_config:
        parts.append(f"service config {service_config}: " + (", ".join(sorted(labels)) or "no label=path entries"))
    else:
        parts.append("a service config's label=path entries with --service-config (or NOWCAST_SERVICE_CONFIG)")
    return "; ".join(parts) + "."
