"""Helpers the tests share (imported as `support.<module>`); tests/conftest.py keeps only pytest's hooks and
fixtures."""
