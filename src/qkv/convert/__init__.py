"""Checkpoint converters: Hugging Face name maps in and out, one module per model family."""
