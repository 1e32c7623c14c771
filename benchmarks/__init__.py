"""The data-loader benchmark harness (``duckstream bench``): prints figures, asserts nothing."""
