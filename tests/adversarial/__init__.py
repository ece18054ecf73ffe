"""Adversarial integration tests: attacks on a server process, with a well-behaved client beside."""
