"""Quality scoring: scorers (``base.Scorer``) write ``scores``; deciding applies rules and the composite."""
