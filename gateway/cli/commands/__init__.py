"""The `pmg` command groups, one module each; ``gateway.cli.main`` registers them."""
