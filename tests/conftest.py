"""pytest configuration shared by every test layer."""
