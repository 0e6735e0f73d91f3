"""collect: the monitored window's samples from the store, optionally merged with the previous
training set."""
