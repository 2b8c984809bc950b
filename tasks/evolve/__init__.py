"""Evolve: one round on one pool shard, each row's way through its steps, the drivers that run them."""
