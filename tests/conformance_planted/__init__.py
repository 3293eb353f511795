"""Test-only backends for the conformance harness (never shipped): one
deliberate bug per op family, plus a crashing and a hanging implementation.
A harness that passes them is broken."""
