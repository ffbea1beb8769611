"""The SpecKV paper's data, its reproduction and its tables."""
