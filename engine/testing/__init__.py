"""Tooling that no request uses: tiny random-weight pipelines and the single-file export, for tests and benches."""
