from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from datasketch import MinHash
from datasketch.lsh import _optimal_param

from dctp_tasks.dedup import minhash

TEXTS = [
    "The quick brown fox jumps over the lazy dog, again and again, until the dog wakes up.",
    "Property tax or 'house tax' is a local tax on buildings, along with appurtenant land.",
    "Two words",
    "Ünïcode wörds are words too; here are some more of them to shingle nicely.",
]


def test_shingles_are_lowercased_word_ngrams_split_on_punctuation():
    assert minhash.shingles("The cat, the HAT!\nand   a bat.", 3) == [
        b"the cat the", b"cat the hat", b"the hat and", b"hat and a", b"and a bat"]


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param("Only two", [b"only two"], id="fewer_words_than_n_is_one_shingle"),
    pytest.param("  ... !! ", [], id="no_words_no_shingles"),
    pytest.param("Ça va, été", [b"\xc3\xa7a va \xc3\xa9t\xc3\xa9"], id="unicode_words"),
])
def test_short_texts(text, expected):
    assert minhash.shingles(text, 5) == expected


@pytest.mark.parametrize("scheme", ["affine32", "legacy"])
@pytest.mark.parametrize("seed", [1, 7, 12345])
@pytest.mark.parametrize("num_perm", [16, 112])
def test_signatures_equal_datasketch(scheme, seed, num_perm):
    hashes, offsets = minhash.shingle_hashes(TEXTS, 5)
    # A tiny chunk forces documents across many chunks: the reduction must not depend on chunking.
    sigs = minhash.signatures(hashes, offsets, num_perm, seed, scheme, chunk_shingles=7)
    for text, sig in zip(TEXTS, sigs, strict=True):
        reference = MinHash(num_perm, seed, scheme=scheme)
        reference.update_batch(minhash.shingles(text, 5))
        np.testing.assert_array_equal(sig.astype(np.uint64), reference.hashvalues.astype(np.uint64))


def test_sha1_hash_is_datasketchs_default():
    sig = minhash.text_signatures(pa.array(TEXTS[:1]), 5, 112, 1, hash="sha1")
    reference = MinHash(112, 1)
    reference.update_batch(minhash.shingles(TEXTS[0], 5))
    np.testing.assert_array_equal(sig[0], reference.hashvalues)


@pytest.mark.parametrize("scheme", ["affine32", "legacy"])
@pytest.mark.parametrize("seed", [1, 7])
def test_words64_signatures_equal_datasketch_with_the_words64_hashfunc(scheme, seed):
    sigs = minhash.text_signatures(pa.array(TEXTS), 5, 112, seed, scheme)
    for text, sig in zip(TEXTS, sigs, strict=True):
        reference = MinHash(112, seed, scheme=scheme, hashfunc=minhash.words64_hash32)
        reference.update_batch(minhash.words64_shingles(text, 5))
        np.testing.assert_array_equal(sig.astype(np.uint64), reference.hashvalues.astype(np.uint64))


def test_words64_shingles_match_the_sha1_tokenizer_on_ordinary_text():
    for text in TEXTS:
        assert minhash.words64_shingles(text, 5) == minhash.shingles(text, 5)
    assert minhash.words64_shingles("The cat, the HAT!\nand   a bat.", 3) == [
        b"the cat the", b"cat the hat", b"the hat and", b"hat and a", b"and a bat"]


def test_words64_hashes_are_the_reference_hash_of_each_shingle_in_order():
    texts = pa.array(["Only two", None, "", " ... !! ", "a b c d e", "one two three four five six seven",
                      "Ça va, été"])
    hashes, offsets = minhash.words64_hashes(texts, 5)
    assert offsets.tolist() == [0, 1, 1, 1, 1, 2, 5, 6]
    expected = [minhash.words64_hash32(g) for t in texts.to_pylist() for g in minhash.words64_shingles(t or "", 5)]
    assert hashes.tolist() == expected
    assert minhash.words64_hash32(b"a b") != minhash.words64_hash32(b"b a")  # word order matters


def test_words64_hashes_do_not_depend_on_the_batch_around_a_text():
    alone = minhash.words64_hashes(pa.array([TEXTS[1]]), 5)[0]
    sliced = pa.array(TEXTS).slice(1, 2)  # an offset into shared buffers
    assert minhash.words64_hashes(sliced, 5)[0][:len(alone)].tolist() == alone.tolist()


def test_unknown_hash_is_refused():
    with pytest.raises(ValueError, match="unknown shingle hash 'md5'"):
        minhash.text_signatures(pa.array(TEXTS), 5, 16, 1, hash="md5")


@pytest.mark.parametrize("hash_", ["words64", "sha1"])
def test_text_without_shingles_has_the_empty_signature(hash_):
    sigs = minhash.text_signatures(pa.array(["", "one two three four five six", None]), 5, 8, 1, hash=hash_)
    assert (sigs[0] == minhash.MAX_HASH32).all() and (sigs[2] == minhash.MAX_HASH32).all()
    assert not (sigs[1] == minhash.MAX_HASH32).any()


@pytest.mark.parametrize(("threshold", "expected"), [(0.5, (22, 5)), (0.7, (12, 9)), (0.9, (5, 22))])
def test_bands_rows_are_datasketchs_optimum(threshold, expected):
    assert minhash.optimal_bands(threshold, 112) == expected == _optimal_param(threshold, 112, 0.5, 0.5)


@pytest.mark.parametrize("num_perm", [16, 112, 256])
def test_bands_rows_agree_with_datasketch_across_thresholds_and_weights(num_perm):
    for threshold in np.arange(0.05, 1.0, 0.05):
        for weights in ((0.5, 0.5), (0.4, 0.6), (0.2, 0.8)):
            assert minhash.optimal_bands(float(threshold), num_perm, *weights) == \
                _optimal_param(float(threshold), num_perm, *weights), (threshold, weights)


def test_band_keys_differ_by_band_and_match_equal_rows():
    sigs = np.array([[1, 2, 1, 2], [1, 2, 9, 9], [1, 2, 1, 2]], dtype=np.uint32)
    keys = minhash.band_keys(sigs, 2, 2)
    assert keys.shape == (3, 2) and keys.dtype == np.uint64
    assert keys[0, 0] == keys[1, 0] == keys[2, 0] and keys[0, 1] == keys[2, 1] != keys[1, 1]
    assert keys[0, 0] != keys[0, 1]  # same rows, different band: different key


def test_bucket_pairs_small_and_large_buckets():
    keys = np.array([5, 5, 5, 7, 7, 9], dtype=np.uint64)
    docs = np.array([3, 1, 2, 4, 0, 6])
    u, v = minhash.bucket_pairs(keys, docs, window=8)
    assert list(zip(u.tolist(), v.tolist(), strict=True)) == [(0, 4), (1, 2), (1, 3), (2, 3)]
    big_u, big_v = minhash.bucket_pairs(np.zeros(6, np.uint64), np.arange(6), window=2)
    assert list(zip(big_u.tolist(), big_v.tolist(), strict=True)) == [(0, 1), (0, 2), (0, 3), (0, 4), (0, 5),
                                                                       (1, 2), (2, 3), (3, 4), (4, 5)]


def test_connected_components_label_each_node_with_its_smallest_member():
    u = np.array([5, 3, 8, 9, 6])
    v = np.array([3, 1, 9, 2, 7])
    labels = minhash.connected_components(10, u, v)
    assert labels.tolist() == [0, 1, 2, 1, 4, 1, 6, 6, 2, 2]


def test_connected_components_of_a_long_chain():
    n = 1000
    labels = minhash.connected_components(n, np.arange(n - 1)[::-1], np.arange(1, n)[::-1])
    assert (labels == 0).all()


def test_estimated_jaccard_is_the_share_of_agreeing_slots():
    sigs = np.array([[1, 2, 3, 4], [1, 2, 0, 4], [9, 9, 9, 9]], dtype=np.uint32)
    assert minhash.estimated_jaccard(sigs, np.array([0, 0]), np.array([1, 2])).tolist() == [0.75, 0.0]


@pytest.mark.parametrize("hash_", ["words64", "sha1"])
def test_signatures_over_a_process_pool_equal_the_in_process_ones(hash_):
    from dctp_tasks.workers import process_pool

    texts = pa.array([f"{TEXTS[i % len(TEXTS)]} copy number {i}" for i in range(1_200)])
    alone = minhash.text_signatures(texts, 5, 16, 1, hash=hash_)
    with process_pool(2) as pool:
        pooled = minhash.text_signatures(texts, 5, 16, 1, pool=pool, workers=2, hash=hash_)
    assert np.array_equal(alone, pooled)
