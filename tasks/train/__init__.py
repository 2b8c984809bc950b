"""Train: fine-tuning on the exported messages (a recipe, in-process or under accelerate)."""
