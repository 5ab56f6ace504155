"""Stand-in for ComfyUI's `comfy` package (see ../README.md): only `utils` and `model_management`."""
