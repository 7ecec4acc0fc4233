"""The kinds of work opskeeper can do; worker/registry.py lists them."""
