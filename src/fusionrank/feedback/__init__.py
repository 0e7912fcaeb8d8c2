"""Learning from shoppers: the event store, simulated shoppers, click models, propensities, counterfactual labels."""
