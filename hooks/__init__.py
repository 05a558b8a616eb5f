"""ccrl.hooks: the Claude Code capture hook.

Everything in this package is standard library only: the hook runs on every tool call, so its
start-up time is the user's latency (see benchmarks/hook_latency.py).
"""
