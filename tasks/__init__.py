"""The Evol-Instruct pipeline, one package per stage of the data's journey (ingest, evolve, judge, round, mix,
export, train) over ``llm`` and ``core``, with ``planning``, ``reporting`` and ``runtime`` beside them."""
