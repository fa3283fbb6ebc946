"""Expert feedback: the store, active-learning selection, and what judgements change."""
