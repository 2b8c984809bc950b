"""Mix: the final data from the seeds and every round's survivors: near dedup, shuffle, sample."""
