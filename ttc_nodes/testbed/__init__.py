"""The built-in testbed: a synthetic arithmetic task and three small models trained on it."""
