"""gateway.sync.commands."""
