"""Answering a question with a model: what the evaluation, `mebot ask` and the server share."""
