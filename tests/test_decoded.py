"""The decoded-pairs cache shared by classify and segment runs (harness/downstream/decoded.py): what it
returns is load_pair's decode, the second run reads the file instead of decoding, and a rewritten image
gets a new entry."""
import os

import numpy as np
import pytest
from PIL import Image

from harness.data import load_dataset
from harness.data.augment import load_pair
from harness.downstream import decoded


@pytest.fixture
def samples(demo_small):
    return load_dataset(demo_small).samples[:10]


def test_cached_pairs_are_load_pairs_decode_and_the_next_run_reads_them(samples, tmp_path, monkeypatch):
    cache = tmp_path / "decoded"
    rgb, mask = decoded.pairs(samples, 24, cache, progress=False)
    assert rgb.shape == (10, 24, 24, 3) and mask.shape == (10, 24, 24) and rgb.dtype == mask.dtype == np.uint8
    for i, s in enumerate(samples):                    # independently: one pair at a time
        want_rgb, want_mask = load_pair(s, 24)
        assert np.array_equal(rgb[i], want_rgb) and np.array_equal(mask[i], want_mask)
    files = sorted(os.listdir(cache))
    assert len(files) == 1 and files[0].endswith(".npz")          # no temporary file left

    def no_decode(*a):
        raise AssertionError("decoded again")
    monkeypatch.setattr(decoded, "load_pair", no_decode)
    again = decoded.pairs(samples, 24, cache, progress=False)
    assert np.array_equal(again[0], rgb) and np.array_equal(again[1], mask)
    with pytest.raises(AssertionError, match="decoded again"):     # another size is another entry
        decoded.pairs(samples, 16, cache, progress=False)


def test_a_rewritten_image_is_a_new_entry_and_no_cache_dir_caches_nothing(samples, tmp_path):
    work = [s for s in samples]
    copy = tmp_path / "copy.png"
    Image.open(work[0].image).convert("RGB").save(copy)
    from dataclasses import replace
    work[0] = replace(work[0], image=copy)
    cache = tmp_path / "decoded"
    first, _ = decoded.pairs(work, 24, cache, progress=False)
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(copy)          # rewritten in place
    os.utime(copy, ns=(os.stat(copy).st_atime_ns, os.stat(copy).st_mtime_ns + 10**9))
    second, _ = decoded.pairs(work, 24, cache, progress=False)
    assert len(os.listdir(cache)) == 2
    assert second[0].max() == 0 and first[0].max() > 0 and np.array_equal(first[1:], second[1:])
    assert np.array_equal(decoded.pairs(work, 24, "", progress=False)[0], second)
    assert len(os.listdir(cache)) == 2
