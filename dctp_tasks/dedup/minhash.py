"""MinHash LSH primitives, vectorised over whole batches: shingles, signatures, band keys, candidates, components.

Signatures equal ``datasketch.MinHash(num_perm, seed, scheme=...).update_batch(shingles).hashvalues`` for the
same shingles: the same ``sha1_hash32`` of each shingle and the same permutations drawn from
``np.random.RandomState(seed)``; only the permutation step runs as one NumPy op over every shingle of a batch.
"""

from __future__ import annotations

import hashlib
import re
from concurrent.futures import Executor
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: A word is a maximal run of Unicode word characters: text-dedup's ``[^A-Za-z_0-9]`` split made Unicode-aware,
#: without the empty tokens its ``re.split`` yields between adjacent separators.
WORD = re.compile(r"\w+")
SCHEMES = ("affine32", "legacy")
HASHES = ("words64", "sha1")
MERSENNE_PRIME = np.uint64((1 << 61) - 1)
MAX_HASH32 = np.uint32((1 << 32) - 1)
_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16))
_FNV_PRIME = np.uint64(0x100000001B3)
_MIX64 = (np.uint64(33), np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53))


def shingles(text: str, n: int) -> list[bytes]:
    """Return the word ``n``-grams of the lower-cased text, each joined by one space and UTF-8 encoded.

    A text with fewer than ``n`` words is one shingle of all its words (text-dedup's rule); no words, no shingles.
    """
    words = WORD.findall(text.lower())
    if len(words) <= n:
        return [" ".join(words).encode()] if words else []
    return [" ".join(words[i:i + n]).encode() for i in range(len(words) - n + 1)]


def _hash_texts(texts: list[str | None], n: int) -> tuple[bytes, list[int]]:
    """Return the concatenated little-endian ``sha1_hash32`` of every shingle, and each text's shingle count."""
    sha1 = hashlib.sha1
    digests: list[bytes] = []
    counts: list[int] = []
    for text in texts:
        grams = shingles(text or "", n)
        digests.extend(sha1(g).digest()[:4] for g in grams)
        counts.append(len(grams))
    return b"".join(digests), counts


def shingle_hashes(texts: list[str | None], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(hashes, offsets)``: every shingle's 32-bit hash, and ``offsets[i]:offsets[i+1]`` per text."""
    digests, counts = _hash_texts(texts, n)
    hashes = np.frombuffer(digests, dtype="<u4").astype(np.uint32)
    return hashes, np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)


def text_signatures(texts: pa.Array, n: int, num_perm: int, seed: int, scheme: str = "affine32",
                    pool: Executor | None = None, workers: int = 1, hash: str = "words64") -> np.ndarray:
    """Return the ``(len(texts), num_perm)`` signatures of the texts' ``n``-word shingles.

    ``hash`` names how shingles are hashed: ``words64`` (vectorised over the batch) or ``sha1`` (datasketch's
    ``sha1_hash32``, one Python call per shingle). With a ``pool`` of ``workers`` processes the texts are split
    into one slice per worker.
    """
    if hash not in HASHES:
        raise ValueError(f"unknown shingle hash {hash!r}; expected one of {HASHES}")
    if pool is None or workers <= 1 or len(texts) < 1_000:
        return _slice_signatures(texts, n, num_perm, seed, scheme, hash)
    step = -(-len(texts) // workers)
    slices = [texts.slice(i, step) for i in range(0, len(texts), step)]
    parts = pool.map(_slice_signatures, slices, *([arg] * len(slices) for arg in (n, num_perm, seed, scheme, hash)))
    return np.concatenate(list(parts))


def _slice_signatures(texts: pa.Array, n: int, num_perm: int, seed: int, scheme: str, hash: str) -> np.ndarray:
    hashed = words64_hashes(texts, n) if hash == "words64" else shingle_hashes(texts.to_pylist(), n)
    return signatures(*hashed, num_perm, seed, scheme)


@lru_cache(maxsize=16)
def permutations(num_perm: int, seed: int, scheme: str = "affine32") -> tuple[np.ndarray, np.ndarray]:
    """Return datasketch's permutation parameters ``(a, b)`` for ``num_perm``, ``seed`` and ``scheme``."""
    gen = np.random.RandomState(seed)
    if scheme == "legacy":
        draws = [(gen.randint(1, MERSENNE_PRIME, dtype=np.uint64), gen.randint(0, MERSENNE_PRIME, dtype=np.uint64))
                 for _ in range(num_perm)]
        ab = np.array(draws, dtype=np.uint64).T
        return ab[0], ab[1]
    if scheme != "affine32":
        raise ValueError(f"unknown MinHash scheme {scheme!r}; expected one of {SCHEMES}")
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def _permute(hashes: np.ndarray, a: np.ndarray, b: np.ndarray, scheme: str) -> np.ndarray:
    """Apply every permutation to every hash: a ``(num_perm, len(hashes))`` uint32 matrix (rows reduce fastest)."""
    if scheme == "legacy":
        # Wrapping uint64 product, then mod the Mersenne prime, truncated to 32 bits: datasketch's legacy step.
        phv = np.multiply(a[:, None], hashes.astype(np.uint64)[None, :])
        phv += b[:, None]
        phv %= MERSENNE_PRIME
        return (phv & np.uint64(MAX_HASH32)).astype(np.uint32)
    s1, m1, s2, m2, s3 = _FMIX32
    hv = hashes ^ (hashes >> s1)
    hv = hv * m1
    hv = hv ^ (hv >> s2)
    hv = hv * m2
    hv = hv ^ (hv >> s3)
    phv = np.multiply(a[:, None], hv[None, :])  # uint32 wrap-around is the mod 2^32
    phv += b[:, None]
    return phv


def signatures(hashes: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int, scheme: str = "affine32",
               chunk_shingles: int = 8_192) -> np.ndarray:
    """Return the ``(docs, num_perm)`` uint32 MinHash signatures; a doc without shingles gets all ``2**32 - 1``."""
    a, b = permutations(num_perm, seed, scheme)
    docs = len(offsets) - 1
    out = np.full((docs, num_perm), MAX_HASH32, dtype=np.uint32)
    start_doc = 0
    while start_doc < docs:
        # Whole documents per chunk, so that one reduceat per chunk yields finished signatures.
        end_doc = int(np.searchsorted(offsets, offsets[start_doc] + chunk_shingles, side="right")) - 1
        end_doc = min(max(end_doc, start_doc + 1), docs)
        lo, hi = offsets[start_doc], offsets[end_doc]
        starts = offsets[start_doc:end_doc]
        filled = offsets[start_doc + 1:end_doc + 1] > starts
        if hi > lo:
            phv = _permute(hashes[lo:hi], a, b, scheme)
            out[start_doc:end_doc][filled] = np.minimum.reduceat(phv, starts[filled] - lo, axis=1).T
        start_doc = end_doc
    return out


@lru_cache(maxsize=64)
def optimal_bands(threshold: float, num_perm: int, false_positive_weight: float = 0.5,
                  false_negative_weight: float = 0.5) -> tuple[int, int]:
    """Return ``(bands, rows)`` minimising the weighted false positive/negative area (datasketch's rule).

    The areas are integrals of polynomials of degree ``bands * rows <= num_perm``, which Gauss-Legendre
    quadrature with ``num_perm // 2 + 1`` nodes integrates exactly; no SciPy (whose import costs half a second).
    Candidates are tried in datasketch's order, bands then rows ascending, the first minimum winning.
    """
    pairs = np.array([(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)], dtype=np.float64)
    nodes, weights = np.polynomial.legendre.leggauss(num_perm // 2 + 2)

    def area(lo: float, hi: float, false_positive: bool) -> np.ndarray:
        s = (hi - lo) / 2 * nodes + (hi + lo) / 2
        p = 1 - (1 - s[None, :] ** pairs[:, 1:2]) ** pairs[:, 0:1]  # probability that s becomes a candidate
        return ((p if false_positive else 1 - p) @ weights) * (hi - lo) / 2

    error = (area(0.0, threshold, True) * false_positive_weight
             + area(threshold, 1.0, False) * false_negative_weight)
    b, r = pairs[int(np.argmin(error))]
    return int(b), int(r)


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """Return a ``(docs, bands)`` uint64 key per band: FNV-1a over the band's rows, seeded by the band, mixed.

    The band number is part of the key, so equal keys mean the same band with the same rows (up to 2**-64).
    """
    values = sigs[:, :bands * rows].reshape(len(sigs), bands, rows).astype(np.uint64)
    keys = np.broadcast_to(np.arange(bands, dtype=np.uint64) + np.uint64(0xCBF29CE484222325), values.shape[:2])
    for row in range(rows):
        keys = (keys ^ values[:, :, row]) * _FNV_PRIME
    shift, m1, m2 = _MIX64
    keys = (keys ^ (keys >> shift)) * m1
    keys = (keys ^ (keys >> shift)) * m2
    return keys ^ (keys >> shift)


def bucket_pairs(keys: np.ndarray, docs: np.ndarray, window: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Return unique candidate pairs ``u < v`` of docs sharing a key (flat arrays, one entry per doc and band).

    Buckets of up to ``window`` docs give every pair; a larger bucket links each doc to the bucket's first doc
    and to the ``window - 1`` docs before it, so pair count stays linear.
    """
    order = np.lexsort((docs, keys))
    k, d = keys[order], docs[order]
    us, vs = [], []
    for step in range(1, window):
        same = k[step:] == k[:-step]
        us.append(d[:-step][same])
        vs.append(d[step:][same])
    if len(k):
        first = np.ones(len(k), dtype=bool)
        first[1:] = k[1:] != k[:-1]
        leader = d[np.maximum.accumulate(np.where(first, np.arange(len(k)), 0))]
        star = leader != d
        us.append(leader[star])
        vs.append(d[star])
    return unique_pairs(np.concatenate(us) if us else docs[:0], np.concatenate(vs) if vs else docs[:0])


def unique_pairs(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the distinct pairs, each as ``(min, max)``, dropping self-pairs."""
    lo, hi = np.minimum(u, v).astype(np.int64), np.maximum(u, v).astype(np.int64)
    keep = lo != hi
    pairs = np.unique(np.stack([lo[keep], hi[keep]], axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1]


def estimated_jaccard(sigs: np.ndarray, u: np.ndarray, v: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """Return the share of agreeing signature slots of each pair ``(u[i], v[i])``."""
    out = np.empty(len(u), dtype=np.float64)
    for lo in range(0, len(u), chunk):
        out[lo:lo + chunk] = (sigs[u[lo:lo + chunk]] == sigs[v[lo:lo + chunk]]).mean(axis=1)
    return out


def connected_components(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Return each node's component label: the smallest node id in its component.

    Array union-find, vectorised: hook every edge's larger root onto the smaller, then compress paths by
    pointer jumping, until no edge joins two roots.
    """
    labels = np.arange(n, dtype=np.int64)
    u, v = np.asarray(u, dtype=np.int64), np.asarray(v, dtype=np.int64)
    while True:
        lu, lv = labels[u], labels[v]
        low = np.minimum(lu, lv)
        hooked = labels.copy()
        np.minimum.at(hooked, lu, low)
        np.minimum.at(hooked, lv, low)
        while True:
            jumped = hooked[hooked]
            if np.array_equal(jumped, hooked):
                break
            hooked = jumped
        if np.array_equal(hooked, labels):
            return labels
        labels = hooked


# -- words64: shingle hashes computed over whole Arrow batches -------------------------------------------------
#: Separators of the ``words64`` tokenizer (RE2): anything but a Unicode letter, number or underscore.
WORD_SEPARATORS = r"[^\p{L}\p{N}_]+"
_POLY = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the word-hash polynomial (golden ratio, 64-bit)


def word_hash64(word: bytes) -> int:
    """Return a word's 64-bit hash: the first 8 bytes (little-endian) of its BLAKE2b digest."""
    return int.from_bytes(hashlib.blake2b(word, digest_size=8).digest(), "little")


def words64_hash32(shingle: bytes) -> int:
    """Return the ``words64`` 32-bit hash of one shingle (words joined by single spaces).

    The reference for ``words64_hashes`` and a ``hashfunc`` for ``datasketch.MinHash``: the polynomial
    ``sum(word_hash64(w_k) * POLY**(len-1-k))`` mod 2**64, mixed (murmur3's fmix64), low 32 bits.
    """
    h = 0
    for word in shingle.split(b" "):
        h = (h * int(_POLY) + word_hash64(word)) & 0xFFFFFFFFFFFFFFFF
    return int(_fmix64(np.array([h], dtype=np.uint64))[0])


def _fmix64(h: np.ndarray) -> np.ndarray:
    shift, m1, m2 = _MIX64
    h = (h ^ (h >> shift)) * m1
    h = (h ^ (h >> shift)) * m2
    return ((h ^ (h >> shift)) & np.uint64(MAX_HASH32)).astype(np.uint32)


def words64_words(texts: pa.Array | pa.ChunkedArray) -> pa.ListArray:
    """Return each text's lower-cased words (``WORD_SEPARATORS`` split), as a list array; nulls have none."""
    if texts.null_count:
        texts = pc.fill_null(texts, "")
    lowered = pc.utf8_lower(texts)
    spaced = pc.utf8_trim(pc.replace_substring_regex(lowered, WORD_SEPARATORS, " "), " ")
    words = pc.split_pattern(spaced, " ")
    return words.combine_chunks() if isinstance(words, pa.ChunkedArray) else words


def words64_shingles(text: str, n: int) -> list[bytes]:
    """Return one text's ``words64`` shingles: its word ``n``-grams (or all its words when fewer), UTF-8."""
    words = [w for w in words64_words(pa.array([text])).to_pylist()[0] if w]
    if len(words) <= n:
        return [" ".join(words).encode()] if words else []
    return [" ".join(words[i:i + n]).encode() for i in range(len(words) - n + 1)]


def words64_hashes(texts: pa.Array | pa.ChunkedArray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(hashes, offsets)`` like ``shingle_hashes``, for ``words64_shingles`` — vectorised.

    Each distinct word of the batch is hashed once (``word_hash64``); an n-gram's hash is the polynomial over
    its words' hashes, computed for every window with ``n`` shifted NumPy products. Equal to ``words64_hash32``
    of every ``words64_shingles`` shingle, in order.
    """
    lists = words64_words(texts)
    flat = lists.flatten()
    present = pc.greater(pc.binary_length(flat), 0).to_numpy(zero_copy_only=False)
    per_list = np.diff(lists.offsets.to_numpy())  # >= 1: splitting "" still gives [""]
    counts = np.add.reduceat(present.astype(np.int64), np.cumsum(per_list) - per_list) if len(flat) else per_list
    encoded = pc.dictionary_encode(flat.filter(pa.array(present)))
    vocabulary = np.fromiter((word_hash64(w) for w in _utf8(encoded.dictionary)), dtype=np.uint64,
                             count=len(encoded.dictionary))
    tokens = vocabulary[encoded.indices.to_numpy(zero_copy_only=False)]
    total = len(tokens)
    windows = np.minimum(counts, n)  # words per shingle: n, or all of a shorter text's words
    grams = np.zeros(total, dtype=np.uint64)
    starts = np.cumsum(counts) - counts
    position = np.arange(total) - np.repeat(starts, counts)
    width = np.repeat(windows, counts)
    is_start = position <= np.repeat(counts, counts) - width  # a window of ``width`` words starts here
    with np.errstate(over="ignore"):
        for k in range(n):
            inside = is_start[:total - k] & (k < width[:total - k])
            grams[:total - k] = np.where(inside, grams[:total - k] * _POLY + tokens[k:], grams[:total - k])
    hashes = _fmix64(grams[is_start])
    shingles = np.where(counts >= n, counts - n + 1, np.minimum(counts, 1))
    return hashes, np.concatenate([[0], np.cumsum(shingles)]).astype(np.int64)


def _utf8(dictionary: pa.Array):
    """Yield the dictionary's strings as UTF-8 bytes, straight from the Arrow buffers."""
    offsets = np.frombuffer(dictionary.buffers()[1], dtype=np.int32)[dictionary.offset:dictionary.offset
                                                                     + len(dictionary) + 1]
    data = dictionary.buffers()[2].to_pybytes() if len(dictionary) else b""
    for lo, hi in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True):
        yield data[lo:hi]
