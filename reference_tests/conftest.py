"""Tests of the reference implementation's own details; they import `cs336_basics` directly."""
