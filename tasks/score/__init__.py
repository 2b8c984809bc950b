"""The scoring stage: complexity and quality scores (Deita) and embeddings, one shard per seed shard."""
