"""The perceptual hash and thumbnail ingest records (leukoflow.images.reduced_grey, issue 19):
taken from one box-reduced grey copy, equal to Pillow's `reducing_gap` resize, within a few bits
of exact `imagehash.phash`, and still close for a re-encoded or re-lit copy of an image."""

from __future__ import annotations

import io

import imagehash
import numpy as np
import pytest
from PIL import Image

from leukoflow import images
from leukoflow.curation.confirm import similarity
from leukoflow.ingest.thumbnails import THUMBNAIL_SIDE, thumbnail, thumbnails_to_array
from leukoflow.synthetic import challenge_layout, synthesize
from tests.conftest import shared_path

GAP = 2.0  # the shipped configs' ingest.phash_reducing_gap
LANCZOS, BOX = Image.Resampling.LANCZOS, Image.Resampling.BOX


@pytest.fixture(scope="module")
def smears(tmp_path_factory) -> list[Image.Image]:
    out = tmp_path_factory.mktemp("smears")
    synthesize(**challenge_layout(out), n_images=24, test_fraction=0.25, seed=3, jpeg_quality=90, defects={},
               near_duplicate_max_distance=3, threads=1)
    return [Image.open(path).convert("RGB") for path in sorted((out / "images").iterdir())]


def distance(first: str, second: str) -> int:
    return int(imagehash.hex_to_hash(first) - imagehash.hex_to_hash(second))


def test_reduced_hash_and_thumbnail_are_pillows_reducing_gap_resize(smears):
    for rgb in smears:
        grey = rgb.convert("L")
        reduced = images.reduced_grey(rgb, GAP)
        expected_hash = str(imagehash.phash(grey.resize((32, 32), LANCZOS, reducing_gap=GAP)))
        assert images.perceptual_hash(rgb, GAP) == images.phash_of_grey(reduced) == expected_hash
        assert thumbnail(reduced) == grey.resize((THUMBNAIL_SIDE,) * 2, BOX, reducing_gap=GAP).tobytes().hex()


def test_the_matrix_dct_gives_imagehashs_bits_exactly(smears):
    for rgb in smears:
        for gap in (GAP, None):
            grey = images.reduced_grey(rgb, gap)
            expected = str(imagehash.phash(grey.resized(32, LANCZOS)))
            assert images.phash_of_grey(grey) == expected


def test_without_a_gap_hash_and_thumbnail_are_the_exact_full_size_ones(smears):
    for rgb in smears[:6]:
        full = images.reduced_grey(rgb, None)
        assert full.image.size == rgb.size and full.image.mode == "L"
        assert images.perceptual_hash(rgb) == images.phash_of_grey(full) == str(imagehash.phash(rgb))
        assert thumbnail(full) == rgb.convert("L").resize((THUMBNAIL_SIDE,) * 2, BOX).tobytes().hex()


def test_the_hash_reads_a_small_grey_copy_never_the_full_image_again():
    rgb = Image.new("RGB", (378, 375), (200, 120, 160))
    reduced = images.reduced_grey(rgb, GAP)
    assert reduced.image.mode == "L" and reduced.image.size == (76, 75)  # factor 5: 378/64 -> 5
    assert reduced.box == (0.0, 0.0, 378 / 5, 375 / 5)
    assert images.reduced_grey(reduced.image, GAP).image.size == (76, 75)  # nothing left to reduce
    small = images.reduced_grey(Image.new("RGB", (50, 40)), GAP)
    assert small.image.size == (50, 40) and small.box == (0.0, 0.0, 50.0, 40.0)
    tall = images.reduced_grey(Image.new("RGB", (70, 700)), GAP)
    assert tall.image.size == (70, 70)  # factors per side: 1 and 10


def test_reduced_hash_stays_within_a_few_bits_of_exact_phash(smears):
    distances = [distance(images.perceptual_hash(rgb, GAP), str(imagehash.phash(rgb))) for rgb in smears]
    assert max(distances) <= 6
    assert np.mean(np.equal(distances, 0)) >= 0.6  # most hashes are identical (92 % of 400 smears)


def test_reduced_hash_on_real_smears_stays_close_to_exact_phash():
    folder = shared_path("data", "bccd", "images")
    paths = sorted(folder.glob("*.jpg"))[:60]
    assert paths
    distances = []
    for path in paths:
        with Image.open(path) as opened:
            rgb = opened.convert("RGB")
        distances.append(distance(images.perceptual_hash(rgb, GAP), str(imagehash.phash(rgb))))
    assert max(distances) <= 6 and np.mean(np.equal(distances, 0)) >= 0.6


def _jpeg(rgb: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def test_near_duplicates_keep_close_hashes_and_matching_thumbnails(smears):
    source, other = smears[0], smears[1]
    relit = Image.fromarray(np.clip(np.asarray(source, dtype=np.float64) * 0.9 + 8, 0, 255).astype(np.uint8))
    copies = [_jpeg(source, 60), relit]
    hash_of = {id(image): images.perceptual_hash(image, GAP) for image in (source, other, *copies)}
    thumbs = thumbnails_to_array([thumbnail(images.reduced_grey(image, GAP)) for image in (source, other, *copies)])
    for copy in copies:
        assert distance(hash_of[id(source)], hash_of[id(copy)]) <= 4
    assert distance(hash_of[id(source)], hash_of[id(other)]) > 12  # another smear: no candidate at 12 bits
    scores = similarity(thumbs, np.array([0, 0, 0]), np.array([2, 3, 1]))
    assert scores[0] >= 0.93 and scores[1] >= 0.93 and scores[2] < 0.93


# ---------------------------------------------------------------- JPEG decoded at a reduced size

def _jpeg_bytes(rgb: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def test_a_jpeg_decodes_at_half_size_and_knows_the_files_size_and_extent(smears):
    rgb = smears[0].crop((0, 0, 301, 263))  # odd sides: the last decoded row and column cover half blocks
    data = _jpeg_bytes(rgb)
    half, full = images.decode_rgb(data, 2), images.decode_rgb(data, 1)
    assert half.image.size == (151, 132) and half.image.mode == "RGB"
    assert half.stored_size == full.stored_size == full.image.size == (301, 263)
    assert half.extent == (0.0, 0.0, 150.5, 131.5) and full.extent == (0.0, 0.0, 301.0, 263.0)
    assert images.decode_rgb(data, 4).image.size == (76, 66)


def test_png_and_jpegs_too_small_for_the_reduction_decode_at_full_size(smears):
    png = io.BytesIO()
    smears[0].save(png, format="PNG")
    assert images.decode_rgb(png.getvalue(), 2).image.size == smears[0].size
    small = _jpeg_bytes(smears[0].resize((90, 60)))  # 60 // 2 < 32: the pHash would read fewer than 32 px
    decoded = images.decode_rgb(small, 2)
    assert decoded.image.size == decoded.stored_size == (90, 60) and decoded.extent == (0.0, 0.0, 90.0, 60.0)


def test_half_size_decode_keeps_the_mean_and_nearly_all_the_std(smears):
    for rgb in smears[:8]:
        data = _jpeg_bytes(rgb)
        full_mean, full_std = images.rgb_mean_std(images.decode_rgb(data, 1).image)
        half_mean, half_std = images.rgb_mean_std(images.decode_rgb(data, 2).image)
        assert abs(half_mean - full_mean) < 0.5
        assert 0.9 * full_std < half_std <= full_std  # only the variance within 2x2 blocks is lost


def test_half_size_decode_keeps_hash_and_thumbnail_of_the_full_decode(smears):
    distances, scores = [], []
    for rgb in smears:
        data = _jpeg_bytes(rgb)
        grey = {r: images.reduced_grey(d.image, GAP, d.extent)
                for r, d in ((r, images.decode_rgb(data, r)) for r in (1, 2))}
        distances.append(distance(images.phash_of_grey(grey[1]), images.phash_of_grey(grey[2])))
        thumbs = thumbnails_to_array([thumbnail(grey[1]), thumbnail(grey[2])])
        scores.append(similarity(thumbs, np.array([0]), np.array([1]))[0])
    assert max(distances) <= 4 and np.mean(np.equal(distances, 0)) >= 0.6
    assert min(scores) >= 0.99  # dedup's bar is 0.93


def test_a_truncated_jpeg_is_still_found_when_decoded_at_half_size(smears):
    data = _jpeg_bytes(smears[0])
    decoded = images.decode_rgb(data[: len(data) * 2 // 3], 2)
    assert "truncated" in decoded.truncation and decoded.stored_size == smears[0].size
