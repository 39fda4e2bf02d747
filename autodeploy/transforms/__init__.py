"""Graph transforms, one per module; `pipeline.registry()` imports and registers them all."""
