"""The content key (one normalisation), exact dedup by it (DuckDB, over shards on every kind of location) and
near dedup of it (MinHash + LSH)."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest

from storage import RunLayout, write_shard
from storage.schema import records_table
from tasks.core.text import content_key, content_keys, normalize_text
from tasks.mix.near_dedup import (
    find_near_duplicates,
    minhash_signatures,
    optimal_lsh_params,
    shingle_hashes,
    utf8_buffers,
)
from tasks.round.dedup import find_exact_duplicates

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def record(id_: str, instruction: str, input_: str = "", status: str = "evolved", round_: int = 1) -> dict:
    return {"id": id_, "root_id": id_, "round": round_, "operation": "deepening", "instruction": instruction,
            "input": input_, "content_key": content_key(instruction, input_), "status": status, "created_at": NOW}


@pytest.fixture(params=["local", "memory"])
def root(request, tmp_path, memory_root):
    return str(tmp_path / "runs") if request.param == "local" else memory_root


def write_round(root: str) -> tuple[list[str], list[str]]:
    layout = RunLayout(root, "run")
    seeds = [record("s1", "Write a poem.", round_=0), record("s2", "Explain gravity", "to a child", round_=0),
             record("s0", "Write a POEM.", round_=0)]
    pool = [record("p1", "Summarise the text", "Some text", round_=1)]
    shard_a = [
        record("c9", "  write a\tpoem.  "),  # seeds s0 and s1: the earliest round, then the smallest id
        record("c7", "New task here"),  # duplicate of c2 (smaller id, other shard)
        record("c5", "Explain  GRAVITY", "to a\nchild"),  # seed s2, input included
        record("c4", "Explain gravity", "to an adult"),  # other input: not a duplicate
        record("c3", "Explain gravity"),  # no input: not s2
        record("c1", "Write a poem.", status="rejected"),  # ignored
    ]
    shard_b = [
        record("c2", "new TASK here"),
        record("c8", "new task here "),  # duplicate of c2
        record("c6", "summarise the text", "some  text"),  # pool row p1
        record("c0", "NEW TASK HERE", status="rejected"),  # ignored: does not survive in c2's place
    ]
    refs = [layout.shard(0, "seeds", 0), layout.shard(1, "pool", 0)]
    write_shard(refs[0], records_table(seeds))
    write_shard(refs[1], records_table(pool))
    cands = [layout.shard(1, "evolved", 0), layout.shard(1, "evolved", 1)]
    write_shard(cands[0], records_table(shard_a))
    write_shard(cands[1], records_table(shard_b))
    return cands, refs


EXPECTED = [("c5", "s2"), ("c6", "p1"), ("c7", "c2"), ("c8", "c2"), ("c9", "s0")]


def test_exact_duplicates_across_references_and_candidates(root):
    cands, refs = write_round(root)
    found = find_exact_duplicates(cands, refs)
    assert found.column_names == ["id", "duplicate_of", "shard", "row"]
    assert list(zip(found["id"].to_pylist(), found["duplicate_of"].to_pylist(), strict=True)) == EXPECTED
    # where each duplicate is: its shard's index among the candidate shards, its row there
    assert list(zip(found["shard"].to_pylist(), found["row"].to_pylist(), strict=True)) == [
        (0, 2), (1, 2), (0, 1), (1, 1), (0, 0)]


def test_exact_duplicates_without_references(root):
    cands, _ = write_round(root)
    found = find_exact_duplicates(cands, [])
    assert found.to_pylist() == [{"id": "c7", "duplicate_of": "c2", "shard": 0, "row": 1},
                                 {"id": "c8", "duplicate_of": "c2", "shard": 1, "row": 1}]
    assert find_exact_duplicates([], []).num_rows == 0


@pytest.mark.s3
def test_exact_duplicates_on_s3(s3_bucket, s3_settings):
    cands, refs = write_round(s3_bucket + "/runs")
    found = find_exact_duplicates(cands, refs, s3_settings)
    assert list(zip(found["id"].to_pylist(), found["duplicate_of"].to_pylist(), strict=True)) == EXPECTED


def test_normalisation_folds_every_kind_of_whitespace_alike():
    assert content_key("abc\u00a0") == "abc" == content_key("ABC", "\u2028 ")
    assert content_key("a\u00a0b\x1cc\u2028D", " In\tPUT ") == "a b c d\nin put"
    assert normalize_text("\u0130STANBUL  Stra\u00dfe") == "i\u0307stanbul stra\u00dfe"


def test_vectorised_content_keys_equal_content_key():
    rng = random.Random(5)
    alphabet = ["a", "B", " ", "  ", "\t", "\n", "\r\n", "\x0b", "\x0c", ".", "\u00e9", "\u00c9", "x y", "\u00a0",
                "\u2028", "\x1c", "\x1d", "\x1e", "\x1f", "\x85", "\u0130", "\u00df", "\u03a3"]
    rows = [("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6))),
             "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 3)))) for _ in range(3000)]
    rows += [("Plain ASCII", ""), ("two  spaces", "x"), (" lead", ""), ("trail ", " "), ("", "")]
    got = content_keys(pa.array([r[0] for r in rows]), pa.chunked_array([[r[1] for r in rows]]))
    assert got.to_pylist() == [content_key(a, b) for a, b in rows]
    assert content_keys(pa.array(["A"]), pa.nulls(1, pa.string())).to_pylist() == ["a"]


VOCAB = [f"{a}{b}{c}" for a in ("br", "cl", "st", "pr", "gr", "fl", "tr", "sn")
         for b in ("a", "e", "i", "o", "u", "ai") for c in ("n", "ck", "st", "mp", "ll", "x")]


def keys(texts: list[str]) -> list[str]:
    return [content_key(t) for t in texts]


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(words)).capitalize() + "."


def test_planted_near_duplicates_are_found():
    rng = random.Random(11)
    originals = [sentence(rng, 60) for _ in range(200)]
    texts, ids = list(originals), [f"t{i:03d}" for i in range(200)]
    expected = {}
    for k, i in enumerate(rng.sample(range(200), 50)):
        words = originals[i].split(" ")
        if k % 2:
            words[rng.randrange(1, len(words) - 1)] = rng.choice(VOCAB)
            copy = " ".join(words)
        else:
            copy = originals[i][:-1] + "!" if k % 4 else originals[i].replace(" ", ", ", 1)
        if copy == originals[i]:
            continue
        position = rng.randrange(ids.index(f"t{i:03d}") + 1, len(texts) + 1)
        texts.insert(position, copy)
        ids.insert(position, f"copy-of-t{i:03d}")
        expected[f"copy-of-t{i:03d}"] = f"t{i:03d}"
    assert len(expected) >= 45
    assert find_near_duplicates(ids, keys(texts)) == expected


def test_no_false_positives_on_distinct_sentences():
    rng = random.Random(2024)
    texts = list(dict.fromkeys(sentence(rng, rng.randint(8, 25)) for _ in range(2000)))
    assert len(texts) == 2000
    assert find_near_duplicates([str(i) for i in range(len(texts))], keys(texts)) == {}


def test_chains_resolve_to_the_first_and_exact_copies_too():
    rng = random.Random(4)
    words = [rng.choice(VOCAB) for _ in range(50)]
    a = " ".join(words)
    b = " ".join(words[:40] + [rng.choice(VOCAB) for _ in range(10)])
    c = " ".join([rng.choice(VOCAB) for _ in range(10)] + b.split()[10:])
    # Jaccard of the 5-grams: a-b 0.68, b-c 0.73, a-c 0.51, each well clear of 0.6 for 256 permutations
    sig = minhash_signatures([a, b, c], num_perm=256)
    assert (sig[0] == sig[1]).mean() >= 0.6 and (sig[1] == sig[2]).mean() >= 0.6
    assert (sig[0] == sig[2]).mean() < 0.6  # a and c are too far apart: only b joins them
    found = find_near_duplicates(["z-first", "c-second", "a-third"], [a, c, b], threshold=0.6, num_perm=256)
    assert found == {"c-second": "z-first", "a-third": "z-first"}
    same = find_near_duplicates(["x", "y", "z", "w"], keys(["Hello there", "hello  THERE", "other", "HELLO there\n"]))
    assert same == {"y": "x", "w": "x"}


def test_short_texts_and_unicode_and_determinism():
    texts = keys(["hi", "HI", "ho", "", " ", "\u00dcber  Stra\u00dfe", "\u00fcber stra\u00dfe", "a\x1cb", "A\x1cB",
                  "a\u00a0b", "\u2028"])
    ids = [f"r{i}" for i in range(len(texts))]
    expected = {"r1": "r0", "r4": "r3", "r6": "r5", "r8": "r7", "r9": "r7", "r10": "r3"}
    assert find_near_duplicates(ids, texts) == expected
    assert find_near_duplicates(ids, texts) == expected
    assert find_near_duplicates(ids, pa.array(texts)) == expected
    assert find_near_duplicates(["only"], ["one"]) == {}
    with pytest.raises(ValueError):
        find_near_duplicates(["a"], ["x", "y"])


def test_shingles_are_the_set_of_byte_five_grams():
    sig = minhash_signatures(["abcdeabcde", "bcdeabcdea", "abcdeabcd", "abcde", "abcd", "abc", ""])
    assert np.array_equal(sig[0], sig[1]) and np.array_equal(sig[0], sig[2])  # one set of 5-grams
    assert len({row.tobytes() for row in sig[2:]}) == 5  # that set, one 5-gram, two shorter texts, the empty text
    padded, starts, lengths = utf8_buffers(pa.array(["xx\u00e9t\u00e9", "\u00e9t\u00e9", None]))
    assert lengths.tolist() == [7, 5, 0]  # UTF-8 bytes: \u00e9 is two
    at = np.array([starts[0] + 2, starts[1], starts[1]])
    hashes = shingle_hashes(padded, at, np.array([5, 5, 4]), 5)
    assert hashes[0] == hashes[1] != hashes[2]  # the same five bytes in two texts; four of them differ


def test_signatures_per_row_and_estimate_jaccard():
    tricky = keys(["  Tabs\tand\nNEWLINES  ", "a  b   c", "\x0bVT\x0c", "Caf\u00e9  Cr\u00e8me", "x\x1c",
                   "\u0130stanbul", "plain text here", "", "     ", "ab", "abcd", "abcde"])
    raw = minhash_signatures(tricky)
    assert np.array_equal(raw[3], minhash_signatures(["caf\u00e9 cr\u00e8me"])[0])
    assert np.array_equal(raw[7], raw[8]) and not np.array_equal(raw[9], raw[10])
    assert np.array_equal(minhash_signatures(tricky[::-1])[::-1], raw)  # per row, whatever its neighbours

    def shingles(text: str) -> set[str]:
        return {text[i:i + 5] for i in range(len(text) - 4)}

    rng = random.Random(9)
    base = sentence(rng, 40)
    other = " ".join(base.split()[:30] + [rng.choice(VOCAB) for _ in range(10)])
    truth = len(shingles(normalize_text(base)) & shingles(normalize_text(other))) / len(
        shingles(normalize_text(base)) | shingles(normalize_text(other)))
    sig = minhash_signatures([base, other], num_perm=512)
    assert abs((sig[0] == sig[1]).mean() - truth) < 0.07


def test_many_rows_over_many_chunks():
    rng = np.random.default_rng(0)
    vocab = np.array(VOCAB)
    texts = [" ".join(row) for row in vocab[rng.integers(0, len(vocab), size=(30000, 16))].tolist()]
    texts[29999] = texts[5].upper() + "  "
    texts[15000] = texts[7].replace(" ", "  ")
    found = find_near_duplicates([f"r{i}" for i in range(30000)], keys(texts))
    assert found == {"r29999": "r5", "r15000": "r7"}


def test_lsh_params():
    assert optimal_lsh_params(0.8, 128) == (16, 8)
    assert optimal_lsh_params(0.8, 128, 0.5, 0.5) == (8, 16)  # equal weights give up recall at the threshold
    for threshold, num_perm in [(0.5, 64), (0.9, 256), (0.7, 100)]:
        bands, rows = optimal_lsh_params(threshold, num_perm)
        assert bands * rows == num_perm
    assert optimal_lsh_params(0.9, 128)[1] > optimal_lsh_params(0.5, 128)[1]
