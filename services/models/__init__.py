"""The model subsystem: scanning users' files, probing, loading, the LRU model cache."""
