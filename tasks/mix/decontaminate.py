"""Decontamination: rows whose text shares a word n-gram with a benchmark item (GPT-3, Open-Platypus: 13-grams).

Words are the lower-cased runs of letters, digits and marks, everything else a separator, so case and punctuation
never tell two texts apart. A text of ``n`` words or more has its ``n``-word windows as grams; a shorter one is one
gram, its whole word sequence, so a short benchmark item only matches a row of exactly its words. Every gram is a
64-bit hash of its words' numbers in the benchmark vocabulary (a false match: about one in 2**64 per pair of grams);
rows are split into words by a byte table (ASCII text) or Arrow's Unicode functions, hashed in blocks, vectorised in
numpy, and looked up in a bitmap of the benchmark hashes' low bits, then in their sorted array."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.mix.benchmarks import Benchmark

_MIX = np.uint64(0x9E3779B97F4A7C15)
_SEED = np.uint64(0x243F6A8885A308D3)
_UNKNOWN, _PAD = -1, -2  # a row's word the benchmarks never use; the padding that makes a short text's one gram
_NON_WORD = r"[^\p{L}\p{N}\p{M}]+"
# ASCII bytes to their word form, byte for byte: letters lower-cased, digits kept, anything else a space
_ASCII = np.array([ord(chr(b).lower()) if chr(b).isalnum() else 32 for b in range(128)] + list(range(128, 256)),
                  np.uint8)
ROW_BLOCK = 20_000


def _spaced(texts: pa.Array) -> pa.Array:
    """The texts lower-cased, every run of non-word characters one space. ASCII texts through a byte table (fast),
    the others through Arrow's Unicode lower-casing and a regular expression."""
    texts = pc.fill_null(texts.cast(pa.string()), "")
    offsets = np.frombuffer(texts.buffers()[1], np.int32)[texts.offset: texts.offset + len(texts) + 1]
    data = np.frombuffer(texts.buffers()[2], np.uint8) if texts.buffers()[2] else np.zeros(0, np.uint8)
    mapped = _ASCII[data[offsets[0]: offsets[-1]]]
    out = pa.StringArray.from_buffers(len(texts), pa.py_buffer(offsets - offsets[0]), pa.py_buffer(mapped))
    other = pc.invert(pc.string_is_ascii(texts))
    if pc.any(other).as_py():
        unicode = pc.replace_substring_regex(pc.utf8_lower(texts.filter(other)), _NON_WORD, " ")
        out = pc.replace_with_mask(out, other, unicode)
    return out


def words(texts: pa.Array | pa.ChunkedArray) -> pa.ListArray:
    """Each text's words: lower-cased runs of letters, digits and marks (a null text has none)."""
    texts = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
    spaced = pc.utf8_trim(_spaced(texts), " ")
    return pc.ascii_split_whitespace(pc.if_else(pc.equal(spaced, ""), pa.scalar(None, pa.string()), spaced))


def _numbered(lists: pa.ListArray, vocab: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Each word's number in ``vocab`` (``_UNKNOWN`` outside it), and each text's word count."""
    numbers = pc.fill_null(pc.index_in(lists.flatten(), value_set=vocab), _UNKNOWN)
    lengths = pc.fill_null(pc.list_value_length(lists), 0)
    return (numbers.to_numpy(zero_copy_only=False).astype(np.int64),
            lengths.to_numpy(zero_copy_only=False).astype(np.int64))


def gram_hashes(numbers: np.ndarray, lengths: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The grams of texts given as word numbers back to back (``lengths`` each): their hashes and the text of each,
    in text order and, within a text, by position. An empty text has no gram."""
    texts = lengths.size
    # n - 1 pads after each text: a short text's one window is its words then pads, never the next text's words
    padded = np.full(numbers.size + texts * (n - 1) + n, _PAD, np.int64)
    padded[np.arange(numbers.size) + np.repeat(np.arange(texts) * (n - 1), lengths)] = numbers
    counts = np.where(lengths >= n, lengths - n + 1, np.minimum(lengths, 1))
    text_starts = np.cumsum(lengths) - lengths + np.arange(texts) * (n - 1)
    owner = np.repeat(np.arange(texts), counts)
    starts = np.repeat(text_starts - (np.cumsum(counts) - counts), counts) + np.arange(int(counts.sum()))
    # the hash of the window at every position, in place over contiguous slices, then the windows wanted
    words_at = padded.view(np.uint64)
    size = padded.size - n + 1
    hashes, scratch = np.full(size, _SEED, np.uint64), np.empty(size, np.uint64)
    for j in range(n):
        np.bitwise_xor(hashes, words_at[j: j + size], out=hashes)
        np.multiply(hashes, _MIX, out=hashes)
        np.right_shift(hashes, np.uint64(31), out=scratch)
        np.bitwise_xor(hashes, scratch, out=hashes)
    hashes = hashes[starts]
    return hashes, owner


class BenchmarkGrams:
    """The grams of benchmark items, each with the first item (in order) that has it."""

    def __init__(self, items: pa.Array | pa.ChunkedArray, n: int):
        if n < 1:
            raise ValueError("n must be >= 1")
        self.n = n
        lists = words(items)
        self.vocab = pc.unique(lists.flatten())
        hashes, owner = gram_hashes(*_numbered(lists, self.vocab), n)
        order = np.argsort(hashes, kind="stable")  # equal hashes keep item order: the first item comes first
        hashes, owner = hashes[order], owner[order]
        first = np.concatenate([[True], hashes[1:] != hashes[:-1]]) if hashes.size else np.zeros(0, bool)
        self.hashes, self.items = hashes[first], owner[first]
        # a bitmap of the hashes' low bits, at most about 3% set: most row grams leave at one lookup, before the search
        bits = min(26, max(16, int(self.hashes.size * 32).bit_length()))
        self.mask = np.uint64((1 << bits) - 1)
        self.seen = np.zeros(1 << bits, bool)
        self.seen[self.hashes & self.mask] = True

    def match(self, texts: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
        """The texts that share a gram with an item, in order, and for each the item of its first such gram."""
        texts = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
        found_rows, found_items = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for start in range(0, len(texts), ROW_BLOCK) if self.hashes.size else ():
            hashes, owner = gram_hashes(*_numbered(words(texts.slice(start, ROW_BLOCK)), self.vocab), self.n)
            maybe = np.flatnonzero(self.seen[hashes & self.mask])
            at = np.minimum(np.searchsorted(self.hashes, hashes[maybe]), self.hashes.size - 1)
            found = self.hashes[at] == hashes[maybe]
            hit, at = maybe[found], at[found]
            rows, first = np.unique(owner[hit], return_index=True)  # grams in position order: the first hit
            found_rows.append(rows + start)
            found_items.append(self.items[at[first]])
        return np.concatenate(found_rows), np.concatenate(found_items)


def find_contaminated(texts: pa.Array | pa.ChunkedArray, items: pa.Array | pa.ChunkedArray,
                      n: int = 13) -> dict[int, int]:
    """``{text index: item index}`` for every text sharing an ``n``-word gram with an item (its first such gram's
    first item)."""
    rows, matched = BenchmarkGrams(items, n).match(texts)
    return dict(zip(rows.tolist(), matched.tolist(), strict=True))


def contaminated_rows(texts: pa.Array | pa.ChunkedArray, benchmarks: list[Benchmark],
                      n: int) -> tuple[np.ndarray, list[str]]:
    """The rows of ``texts`` that overlap an item of ``benchmarks`` (in order), and for each the item it overlaps
    (``{path}#{record}``, the first file's first item that has the row's first shared gram)."""
    items = pa.concat_arrays([b.texts for b in benchmarks])
    rows, matched = BenchmarkGrams(items, n).match(texts)
    ends = np.cumsum([len(b.texts) for b in benchmarks])
    files = np.searchsorted(ends, matched, side="right")
    records = matched - (ends - [len(b.texts) for b in benchmarks])[files]
    return rows, [benchmarks[f].item(r) for f, r in zip(files.tolist(), records.tolist(), strict=True)]
