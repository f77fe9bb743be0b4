"""Reference implementations copied from upstream repositories (see each module header)."""
