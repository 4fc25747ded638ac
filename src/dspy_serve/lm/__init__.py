"""Language models: the allow-listed registry, pooled HTTP engines, and the embedded local model."""
