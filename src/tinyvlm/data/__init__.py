"""Datasets, file formats, tokenizer and batching."""
