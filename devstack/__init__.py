"""The local run of the whole bot (`python3 dev.py start`): processes, Redis, the sandbox. Not used in production."""
