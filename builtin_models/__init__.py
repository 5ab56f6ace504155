"""Models made in code: the built-in tiny pipelines (`builtin:` in LoadPipeline) and the demo model."""
