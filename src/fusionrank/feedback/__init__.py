"""Learning from shoppers: the event store, simulated shoppers, click models, propensities, counterfactual labels,
and team-draft interleaving (the online comparison of two rankers)."""
