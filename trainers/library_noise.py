"""Library log lines that mean nothing to a ccrl user, dropped by logger and exact wording.

Here rather than in the agent's logging setup because the trainers install the filters too
(each rank of a multi-GPU run imports bitsandbytes) and never import the agent.
"""

from __future__ import annotations

import logging

# (logger, start of the message): library lines that say nothing a ccrl user can act on.
LIBRARY_NOISE: tuple[tuple[str, str], ...] = (
    # bitsandbytes on a CPU with AVX512-BF16 tries to fetch an optional 4-bit CPU kernel through the
    # `kernels` package and warns when that is not installed; ccrl never trains in 4 bits on a CPU.
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community"),
)


class _DropMessage(logging.Filter):
    """Drops records whose (unformatted) message starts with ``prefix``; everything else passes."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def silence_library_noise() -> None:
    """Install the ``LIBRARY_NOISE`` filters on their loggers (before or after the library is
    imported: a logger is the same object for every ``getLogger`` of its name). Idempotent."""
    for name, prefix in LIBRARY_NOISE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropMessage(prefix))
