"""The pipeline components diffusers' LoRA loaders address, named once for the whole engine.

diffusers prefixes a LoRA's keys with the component they belong to ("unet.", "text_encoder.", ...);
pipelines, formats, coverage, the state transitions and the nodes all speak of the same names.
"""

from __future__ import annotations

DENOISERS = ("unet", "transformer")
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")
# In diffusers' order (`_lora_loadable_modules` lists the denoiser first, then the text encoders).
COMPONENTS = DENOISERS + TEXT_ENCODERS
