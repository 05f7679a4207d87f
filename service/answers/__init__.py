"""Answering a question: the recommender the API, the evaluation and the tuning runs call."""
