"""The dataset's fast read path gives what zarr and the CF decoding give, nodata included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

from pipelines.chunk_read import LocalChunkArray, decode_table, local_chunk_array
from pipelines.dataset import SequenceDataset
from pipelines.store import FILL, SCALE, ProductArchive, decode_precip
from pipelines.synthetic import synthetic_frames


def test_decode_table_equals_the_cf_decoding_bit_for_bit() -> None:
    every_code = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    expected = decode_precip(every_code)
    got = np.take(decode_table(np.dtype(np.uint16), float(SCALE), FILL), every_code)
    assert got.dtype == np.float32
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))  # NaN at FILL, same bits elsewhere
    assert np.isnan(got[-1, -1]) and np.isnan(got).sum() == 1


@pytest.mark.parametrize(
    ("chunks", "shuffle"), [((1, 16, 16), "shuffle"), ((1, 512, 512), "bitshuffle"), ((2, 7, 5), None)]
)
def test_slices_equal_zarr_including_chunks_never_written(tmp_path: Path, chunks: tuple[int, ...],
                                                         shuffle: str | None) -> None:
    """Old layouts (512 px, bitshuffle), odd chunks, no compressor: all read as zarr reads them."""
    compressors = (BloscCodec(cname="zstd", clevel=3, shuffle=shuffle),) if shuffle else None
    array = zarr.create_array(str(tmp_path / "a.zarr"), shape=(6, 40, 33), chunks=chunks, dtype="uint16",
                              fill_value=int(FILL), compressors=compressors)
    rng = np.random.default_rng(0)
    data = rng.integers(0, 3000, size=array.shape).astype(np.uint16)
    data[rng.random(array.shape) < 0.2] = FILL
    array[:4] = data[:4]  # the last two frames are never written: they read as fill_value
    fast = local_chunk_array(zarr.open_array(str(tmp_path / "a.zarr"), mode="r"))
    assert isinstance(fast, LocalChunkArray)
    for selection in [(slice(None),), (slice(1, 6), slice(3, 29), slice(0, 17)), (3, slice(5, 40), slice(2, 9)),
                      (-1,), (Ellipsis, 4), (slice(2, 2),), (slice(0, 6, 2),), ([0, 2], slice(None))]:
        for _ in range(2):  # the second read may come from the decoded-chunk cache
            assert np.array_equal(fast[selection], array[selection]), selection


def test_dataset_items_equal_zarrs_own_read(store: str) -> None:
    ProductArchive(store, "synth").write(synthetic_frames(n_frames=20, shape=(64, 64)))
    ds = SequenceDataset(store, "synth", 3, 3, crop=24, min_rain_fraction=0.05, crop_tries=5)
    assert isinstance(ds.array, LocalChunkArray)
    plain = zarr.open_array(ProductArchive(store, "synth")._zstore, path="precip", mode="r")
    for index in range(len(ds)):
        item = ds[index]
        y0, x0 = item["offset"].tolist()
        start = int(ds.starts[index])
        rate = decode_precip(plain[start : start + 6, y0 : y0 + 24, x0 : x0 + 24])
        assert np.array_equal(item["input_mask"][:, 0].numpy(), ~np.isnan(rate[:3]))
        z = ds.normalizer.forward(np.nan_to_num(rate, nan=0.0)).astype(np.float32)
        assert np.array_equal(item["targets"][:, 0].numpy(), z[3:])
