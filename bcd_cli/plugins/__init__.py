"""Hydra plugins of bcd-cli, installed into Hydra's ``hydra_plugins`` namespace (see pyproject.toml)."""
