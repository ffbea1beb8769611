"""Draft policies: the DraftPolicy contract, baselines, the marginal-value rule, speckv, paper, oracle, registry."""
