"""Data the tests read: apps to import, expected documents."""
