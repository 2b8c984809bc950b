"""Round: finishing a round over its shards: exact dedup, the next pool, the round invariant."""
