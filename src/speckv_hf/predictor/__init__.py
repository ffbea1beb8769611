"""The gamma predictor: the Hub-mixin model, its features, its card, the paper's npz import."""
