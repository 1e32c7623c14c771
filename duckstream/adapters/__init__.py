"""Adapters from the Arrow core to torch and Hugging Face datasets."""
