"""Where the demo's real radar comes from: $NOWCAST_SAMPLE_DATA, ../shared/data, or a download.

The download takes the same public pysteps example files (FMI composite, 28 Sep 2016) with
pooch and checks each against a pinned SHA-256. With none of these, the demo says so and
falls back to the synthetic storm generator.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

FMI_SUBDIR = Path("radar/fmi/pgm/20160928")
PYSTEPS_DATA_URL = "https://github.com/pySTEPS/pysteps-data/raw/master/radar/fmi/20160928/"
FMI_FILES: tuple[tuple[str, str], ...] = (
    ("201609281445_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz", "d2d0a6885e6e0f7663e51a2da2e1dc35316b5137013472084b03d3a8f57ca009"),
    ("201609281450_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz", "fb8dcd12f2871bdf5459ea83a031fc68a6ccb5880cfbed7da9d2214632ce7c55"),
    ("201609281455_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz", "8ab0371af8f345d27095a8a103922f4077a85734d40a5122aff4c73260fe09e5"),
    ("201609281500_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz", "0a3bc5bea9576894b6a1c7f51e4976de183d7b9ce2f0baa41f0d52269599d298"),
    ("201609281505_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz", "c3d3c335055b427966c1e5374bed9e81f7cbd5ada347c664e0653c6575745d2b"),
    ("201609281510_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz", "ecdebb4dfba92717306cef5c834a291cf9ed2b34de09ba661e8b728875d8c3d1"),
    ("201609281515_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz", "54193ed7fca6fd9225f3f57b2cda23e76eea617ebcabb1854d425159a76d4aaf"),
    ("201609281520_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz", "20c9d7c75f52aed0b77d8397e3758cd783e501e840d076db75e988e4d2a1917b"),
    ("201609281525_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz", "f4f7ab3ff7a048c0a3a3cceeafe74986ff7ba8c0d93a1c8d88e91eee3a34f927"),
    ("201609281530_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz", "356d94f1240fd61625cfe69a0bc33bab18763f42ef04a55d1ad2a3073adc7ec9"),
    ("201609281535_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz", "45a4a110987295940ca2ce41b50139d1c2a6c577bef8733823804b8be4402531"),
    ("201609281540_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz", "695ce277de792c310143660d2946bd805d0ded7e122e88fa4354d52e3a205a98"),
    ("201609281545_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz", "7412eaa1d27ec6f752a9582afa2dcfd7671e34958d5e4270fadc2336e33af7ef"),
    ("201609281550_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz", "9ff28fd85c2acb6c0060e9d1e2c9ec0211eae70b7626f7b5720bc23fff3325f4"),
    ("201609281555_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz", "0d5d091fd4bf17e127a58735daf1950accabc385bfb9d99aabb7ed89136fced5"),
    ("201609281600_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz", "25627468dd5c50b625a776cdf45fed876a25fbb7b2ebabaf132cc0ae046fbbff"),
    ("201609281605_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz", "5a4538591670640650cd2e8b2616e16a4362cca0c7be418794701d0ee53f132c"),
    ("201609281610_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz", "631e28aeded1b25abbe083a742f8dd2e49196e6928f2e88abfa06b2b7cc22d7a"),
    ("201609281615_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz", "149db9b146c5a2fa95e7f198e7d57e59e689cec777aeb05dc8d2507c2fc8336c"),
    ("201609281620_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz", "fafb22e6d5669c1996a5458091f796cbcae44dce1c5566693b40f625b940ab37"),
    ("201609281625_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz", "082b1e476d779aec80187a5be69d990a8dfdfc34c3b5995ddf22930bead37091"),
    ("201609281630_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz", "70a7fb8241c7a8619e89f1a98e78f30b0d5fdc0afca216c58466a240a8258cea"),
    ("201609281635_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz", "090284727e090437787395cebc6e5b07f3c473427f09a14132f7372ceb0316de"),
    ("201609281640_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz", "76f84dbed9b03450e25cad4879d69b1bf69c823be25a20591496f6f8e49f0777"),
)


#: the sample events tests and benchmarks read: name -> (folder under the data directory, importer
#: format, file pattern); ../shared/data/README.md describes each
SAMPLE_EVENTS: dict[str, tuple[str, str, str]] = {
    "fmi": (str(FMI_SUBDIR), "fmi_pgm", "*.pgm.gz"),
    "mch": ("radar/mch/20160711", "mch_gif", "*.gif"),
    "knmi": ("radar/KNMI/2010/08", "knmi_hdf5", "*.h5"),
    "opera": ("radar/OPERA/20180824", "odim_hdf5", "*.hdf"),
    "saf": ("saf/20180601/CRR", "saf_crri", "*.nc"),
}


def sample_event_files(name: str, count: int | None = None, data_dir: Path | None = None) -> list[Path]:
    """The first ``count`` (default all) files of a sample event, sorted by name (= valid time).

    Raises FileNotFoundError naming the folder and the pattern when there are none."""
    if name not in SAMPLE_EVENTS:
        raise KeyError(f"no sample event {name!r}: choose from {', '.join(SAMPLE_EVENTS)}")
    base = data_dir or find_sample_data_dir()
    folder, _, pattern = SAMPLE_EVENTS[name]
    files = sorted((base / folder).glob(pattern)) if base is not None else []
    if not files:
        where = base / folder if base is not None else f"{folder} (no sample data directory found)"
        raise FileNotFoundError(f"sample data missing: no {pattern} in {where} (see ../shared/data/README.md; "
                                "NOWCAST_SAMPLE_DATA names another directory)")
    return files[:count] if count else files


@dataclass
class DemoSource:
    description: str
    product: str
    format: str
    files: list[Path] = field(default_factory=list)


def find_sample_data_dir() -> Path | None:
    """$NOWCAST_SAMPLE_DATA, else a ``shared/data`` beside the checkout or the working directory."""
    env = os.environ.get("NOWCAST_SAMPLE_DATA")
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"NOWCAST_SAMPLE_DATA={env} is not a directory")
        return path
    here = Path(__file__).resolve().parent
    for base in (Path.cwd(), *Path.cwd().parents[:2], here.parent, *here.parents[1:3]):
        candidate = base / "shared" / "data"
        if (candidate / "README.md").is_file() or (candidate / "radar").is_dir():
            return candidate
        sibling = base.parent / "shared" / "data"
        if sibling.is_dir():
            return sibling
    return None


def download_fmi_sample(cache_dir: Path | None = None) -> list[Path]:
    """Fetch the pinned FMI files with pooch (hash-checked); raises when offline."""
    import pooch

    if os.environ.get("NOWCAST_NO_DOWNLOAD"):
        raise RuntimeError("downloads disabled by NOWCAST_NO_DOWNLOAD")
    cache = cache_dir or Path(pooch.os_cache("nowcast")) / "fmi-20160928"
    downloader = pooch.HTTPDownloader(timeout=20, progressbar=False)
    return [
        Path(
            pooch.retrieve(
                PYSTEPS_DATA_URL + name, known_hash=f"sha256:{digest}", path=cache, fname=name,
                downloader=downloader,
            )
        )
        for name, digest in FMI_FILES
    ]


def demo_source() -> DemoSource:
    """Real FMI radar when it can be found or fetched, else the synthetic storm."""
    data_dir = find_sample_data_dir()
    if data_dir is not None and (data_dir / FMI_SUBDIR).is_dir():
        files = sorted((data_dir / FMI_SUBDIR).glob("*.pgm.gz"))
        return DemoSource(f"FMI radar composite, {len(files)} files from {data_dir / FMI_SUBDIR}", "fmi", "fmi_pgm", files)
    try:
        files = download_fmi_sample()
        return DemoSource(f"FMI radar composite, {len(files)} files downloaded (pysteps-data)", "fmi", "fmi_pgm", files)
    except Exception as exc:  # offline, or the host is unreachable
        return DemoSource(
            f"no sample radar found (set NOWCAST_SAMPLE_DATA or put pysteps data in ../shared/data) "
            f"and the download failed ({type(exc).__name__}); using the synthetic storm generator",
            "synthetic", "synthetic",
        )
