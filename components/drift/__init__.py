"""drift: the input-drift test on the champion's embeddings, and the run's retrain decision."""
