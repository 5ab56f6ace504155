"""Key-format families the engine reads beyond what diffusers' own converters take (one module each)."""
