"""The always-on agent: scheduler, cycles, step child processes, forwarding, the systemd service."""
