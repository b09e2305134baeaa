"""Descriptions of what is served, read from disk: the model config (below layers and models)."""
