"""Reference designs dspy-serve is measured against."""
