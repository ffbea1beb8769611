"""Generation: the generator, the transformers hook, our loop, the assisted-loop adapter, caches, verification."""
