"""Helpers shared by the tests: the fake LM, real servers, programs, CLI runs."""
