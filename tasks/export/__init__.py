"""Export: Parquet, Alpaca JSON, chat messages, the dataset card and its plots."""
