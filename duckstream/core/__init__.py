"""The Arrow + DuckDB core: source resolution, planning and reading. Never imports torch."""
