"""Stand-in for `comfy.model_management`'s interrupt flag (see ../README.md).

As in ComfyUI: POST /interrupt calls `interrupt_current_processing()`; long-running code calls
`throw_exception_if_processing_interrupted()`, which clears the flag and raises
`InterruptProcessingException`, which the executor reports as `execution_interrupted`.
"""

from __future__ import annotations

import threading


class InterruptProcessingException(Exception):
    pass


interrupt_processing_mutex = threading.RLock()
interrupt_processing = False


def interrupt_current_processing(value: bool = True) -> None:
    global interrupt_processing
    with interrupt_processing_mutex:
        interrupt_processing = value


def processing_interrupted() -> bool:
    with interrupt_processing_mutex:
        return interrupt_processing


def throw_exception_if_processing_interrupted() -> None:
    global interrupt_processing
    with interrupt_processing_mutex:
        if interrupt_processing:
            interrupt_processing = False
            raise InterruptProcessingException()
