"""Test-only: a backend module that raises while being imported (broken, not merely unavailable)."""
NAME = "broken"
raise RuntimeError("half-written backend")
