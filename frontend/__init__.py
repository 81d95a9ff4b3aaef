"""The unprivileged orchestrator: API daemon, policy, state, CLI."""
