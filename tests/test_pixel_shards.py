"""The compact classifier-input cache: encode -> shard + index -> decode, integrity, clear errors."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from leukoflow.classification import crop_cache
from leukoflow.classification.pixel_shards import FORMATS, PixelCache, encode_tile, write_shard

SIZE = 24


def _tiles(n: int, seed: int = 0) -> np.ndarray:
    """Half noise (hard to compress), half smooth gradients with speckle (smear-like)."""
    rng = np.random.default_rng(seed)
    tiles = rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
    ramp = np.linspace(120, 230, SIZE, dtype=np.float64)
    for k in range(0, n, 2):
        smooth = ramp[None, :, None] + rng.normal(0, 3, (SIZE, SIZE, 3))
        tiles[k] = np.clip(smooth, 0, 255).astype(np.uint8)
    return tiles


def _shard(tmp_path, tiles: np.ndarray, fmt: str) -> tuple[PixelCache, pd.DataFrame]:
    index = write_shard(tmp_path / f"t.{fmt}.shard", (encode_tile(t, fmt) for t in tiles), fmt=fmt, size=SIZE,
                        rows=len(tiles))
    index.insert(0, "id", [f"cell{k}" for k in range(len(tiles))])
    return PixelCache(tmp_path / f"t.{fmt}.shard", index), index


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_gives_back_the_exact_pixels(tmp_path, fmt):
    tiles = _tiles(9)
    cache, index = _shard(tmp_path, tiles, fmt)
    assert cache.shape == tiles.shape and cache.dtype == np.uint8 and len(cache) == 9
    assert np.array_equal(cache[np.arange(9)], tiles)
    assert np.array_equal(cache[4], tiles[4]) and np.array_equal(cache[2:5], tiles[2:5])
    assert np.array_equal(cache[np.array([7, 1, 7])], tiles[[7, 1, 7]])
    assert np.array_equal(cache[3, 5, 2:4], tiles[3, 5, 2:4]) and np.array_equal(cache[1:3, 0], tiles[1:3, 0])
    # offsets are contiguous after the header: the index describes the whole file
    assert (index["offset"].diff().dropna() == index["length"].iloc[:-1].to_numpy()).all()
    assert index["offset"].iloc[-1] + index["length"].iloc[-1] == (tmp_path / f"t.{fmt}.shard").stat().st_size


def test_threaded_decoding_matches_one_decoder(tmp_path):
    tiles = _tiles(16, seed=3)
    cache, index = _shard(tmp_path, tiles, "webp")
    pooled = PixelCache(cache.path, index, decoders=4)
    rows = np.random.default_rng(1).permutation(16)
    assert np.array_equal(pooled[rows], tiles[rows])


def test_compact_formats_are_smaller_on_smooth_tiles(tmp_path):
    tiles = _tiles(8)[::2]  # the smooth ones
    sizes = {fmt: _shard(tmp_path, tiles, fmt)[1]["length"].sum() for fmt in FORMATS}
    assert sizes["raw"] == tiles.size
    assert sizes["webp"] < 0.7 * sizes["raw"] and sizes["png"] < 0.8 * sizes["raw"]


def test_a_corrupted_byte_names_the_file_and_row(tmp_path):
    tiles = _tiles(6)
    cache, index = _shard(tmp_path, tiles, "webp")
    data = bytearray(cache.path.read_bytes())
    data[int(index.at[3, "offset"]) + int(index.at[3, "length"]) // 2] ^= 0xFF
    cache.path.write_bytes(bytes(data))
    damaged = PixelCache(cache.path, index)
    assert np.array_equal(damaged[[0, 1, 2, 4, 5]], tiles[[0, 1, 2, 4, 5]])  # the other rows still read
    with pytest.raises(ValueError, match=rf"{re.escape(str(cache.path))}: row 3 \(id cell3\) is corrupt"):
        damaged[np.arange(6)]


def test_undecodable_bytes_with_a_matching_checksum_name_the_file_and_row(tmp_path):
    tiles = _tiles(3)
    index = write_shard(tmp_path / "bad.shard", [encode_tile(tiles[0], "png"), b"not an image",
                                                 encode_tile(tiles[2], "png")], fmt="png", size=SIZE, rows=3)
    index.insert(0, "id", ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"bad\.shard: row 1 \(id b\) cannot be decoded"):
        PixelCache(tmp_path / "bad.shard", index)[1]


def test_decoding_does_not_go_through_a_wrapped_image_open(tmp_path, monkeypatch):
    """ultralytics wraps PIL's Image.open; a bad tile must still give our error, a good one its pixels."""

    def wrapped_open(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'pi_heif'")

    monkeypatch.setattr(Image, "open", wrapped_open)
    tiles = _tiles(2)
    for fmt in ("png", "webp"):
        index = write_shard(tmp_path / f"{fmt}.shard", [encode_tile(tiles[0], fmt), b"not an image"], fmt=fmt,
                            size=SIZE, rows=2)
        index.insert(0, "id", ["a", "b"])
        cache = PixelCache(tmp_path / f"{fmt}.shard", index)
        assert np.array_equal(cache[0], tiles[0])
        with pytest.raises(ValueError, match=r"row 1 \(id b\) cannot be decoded"):
            cache[1]


def test_a_truncated_shard_or_a_foreign_index_is_refused(tmp_path):
    tiles = _tiles(5)
    cache, index = _shard(tmp_path, tiles, "png")
    data = cache.path.read_bytes()
    cache.path.write_bytes(data[:int(index.at[4, "offset"]) + 3])
    with pytest.raises(ValueError, match=r"row 4 \(id cell4\) lies beyond the end of the file.*truncated"):
        PixelCache(cache.path, index)
    cache.path.write_bytes(data)
    with pytest.raises(ValueError, match=r"index has 4 rows.*shard holds 5 rows"):
        PixelCache(cache.path, index.head(4))
    with pytest.raises(ValueError, match=r"lacks \['crc32'\]"):
        PixelCache(cache.path, index.drop(columns="crc32"))
    (tmp_path / "old.npy").write_bytes(np.lib.format.header_data_from_array_1_0(tiles).__repr__().encode())
    with pytest.raises(ValueError, match=r"old\.npy: not a leukoflow pixel shard"):
        PixelCache(tmp_path / "old.npy", index)


def _smears(tmp_path, n_images: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(5)
    images, crops = [], []
    for k in range(n_images):
        path = tmp_path / f"img{k}.jpg"
        base = np.clip(np.full((60, 80, 3), 215.0) + rng.normal(0, 6, (60, 80, 3)), 0, 255).astype(np.uint8)
        base[20:40, 30:55] = (120, 60, 150)
        Image.fromarray(base).save(path, quality=90)
        images.append({"name": path.name, "path": str(path)})
        for j in range(2):
            crops.append({"crop_id": f"{path.name}#{j}", "name": path.name, "split": "train", "fold": k % 2,
                          "x1": 10.0 + 5 * j, "y1": 8.0, "x2": 60.0, "y2": 50.0 - 3 * j})
    return pd.DataFrame(images), pd.DataFrame(crops)


def test_the_workflow_cache_is_lossless_and_deterministic(tmp_path):
    images, crops = _smears(tmp_path)
    paths = dict(zip(images["name"], images["path"]))
    built = {}
    for fmt, stem in (("raw", "a"), ("webp", "b"), ("webp", "c")):
        index = crop_cache.build_crop_cache(crops, paths, 40, tmp_path / f"{stem}.shard", threads=2, fmt=fmt)
        crop_cache.write_index(index, tmp_path / f"{stem}.parquet")
        built[stem] = crop_cache.read_cache(tmp_path / f"{stem}.shard", tmp_path / f"{stem}.parquet")
    raw, webp = built["a"][0][:], built["b"][0][:]
    assert raw.shape == (6, 40, 40, 3) and np.array_equal(raw, webp)
    assert built["b"][1]["length"].sum() < built["a"][1]["length"].sum()
    assert (tmp_path / "b.shard").read_bytes() == (tmp_path / "c.shard").read_bytes()
    assert built["b"][1].equals(built["c"][1])
    with pytest.raises(ValueError, match=r"index .*b\.parquet has columns"):
        built["b"][1].drop(columns="offset").to_parquet(tmp_path / "b.parquet")
        crop_cache.read_cache(tmp_path / "b.shard", tmp_path / "b.parquet")


def test_crop_tiles_follow_their_image_then_row_whatever_the_table_order(tmp_path):
    images, crops = _smears(tmp_path)
    shuffled = crops.iloc[[3, 0, 5, 1, 4, 2]].reset_index(drop=True)  # images interleaved
    paths = dict(zip(images["name"], images["path"]))
    index = crop_cache.build_crop_cache(shuffled, paths, 24, tmp_path / "s.shard", threads=2, fmt="raw")
    assert list(index["id"]) == ["img0.jpg#0", "img0.jpg#1", "img1.jpg#1", "img1.jpg#0", "img2.jpg#1", "img2.jpg#0"]
    crop_cache.write_index(index, tmp_path / "s.parquet")
    tiles, _ = crop_cache.read_cache(tmp_path / "s.shard", tmp_path / "s.parquet")
    for row, crop_id in enumerate(index["id"]):
        box = shuffled.loc[shuffled["crop_id"] == crop_id].iloc[0]
        with Image.open(paths[box["name"]]) as image:
            expected = crop_cache.square_resize(
                image.convert("RGB").crop((int(box.x1), int(box.y1), int(box.x2), int(box.y2))), 24)
        np.testing.assert_array_equal(tiles[row], expected)
    empty = crop_cache.build_crop_cache(crops.iloc[:0], paths, 24, tmp_path / "e.shard", threads=2, fmt="raw")
    assert len(empty) == 0 and list(empty.columns) == crop_cache.INDEX_COLUMNS


def test_cache_encoding_keeps_order_with_a_bounded_number_of_tasks_in_flight():
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    in_flight, most, lock = 0, 0, threading.Lock()

    def slow_square(value: int) -> int:
        nonlocal in_flight, most
        with lock:
            in_flight += 1
            most = max(most, in_flight)
        time.sleep(0.002 * (value % 3))  # later tasks may finish first
        with lock:
            in_flight -= 1
        return value * value

    submitted = []

    def items():
        for value in range(200):
            submitted.append(value)
            yield value

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = crop_cache._ordered_map(pool, slow_square, items(), window=8)
        first = next(results)
        assert first == 0 and len(submitted) <= 8  # not every task submitted up front
        rest = list(results)
    assert [first, *rest] == [value * value for value in range(200)]
    assert most <= 4
