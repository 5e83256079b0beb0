"""banditflow: automated model optimization rolled out by a bandit."""
