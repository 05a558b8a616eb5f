"""Library log lines that mean nothing to a ccrl user are dropped, precisely: bitsandbytes'
"kernels" warning on a CPU (checked against the real library), and nothing else."""

from __future__ import annotations

import logging
import subprocess
import sys

from ccrl.trainers.library_noise import LIBRARY_NOISE, silence_library_noise

KERNELS = "Failed to load CPU gemm_4bit_forward from kernels-community"


def test_only_the_named_message_is_dropped(caplog):
    silence_library_noise()
    silence_library_noise()  # twice = once
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    assert sum(type(f).__name__ == "_DropMessage" for f in logger.filters) == len(LIBRARY_NOISE)
    with caplog.at_level(logging.WARNING, logger="bitsandbytes.backends.cpu.ops"):
        logger.warning(KERNELS + ": %s. Please make sure you already `pip install kernels`", "No module named 'kernels'")
        logger.warning("Some other bitsandbytes warning")
        logging.getLogger("bitsandbytes.other").warning(KERNELS)
    assert [r.getMessage() for r in caplog.records] == ["Some other bitsandbytes warning", KERNELS]


def test_importing_bitsandbytes_prints_nothing_once_silenced():
    """Where the CPU makes bitsandbytes warn (AVX512-BF16, no `kernels` package), the import is
    silent after ``silence_library_noise``; where it does not warn, both are silent."""
    plain = subprocess.run([sys.executable, "-c", "import bitsandbytes"], capture_output=True, text=True, timeout=300)
    quiet = subprocess.run([sys.executable, "-c", "from ccrl.trainers.library_noise import silence_library_noise; "
                            "silence_library_noise(); import bitsandbytes"], capture_output=True, text=True, timeout=300)
    assert plain.returncode == quiet.returncode == 0, plain.stderr + quiet.stderr
    assert KERNELS not in quiet.stderr
    assert quiet.stderr.splitlines() == [line for line in plain.stderr.splitlines() if KERNELS not in line]
