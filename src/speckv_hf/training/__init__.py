"""Profiling runs into step records, and training predictors from them."""
