"""The running gateway: the daemon (composition root) and what it schedules, watches and reports.

Nothing outside ``gateway.runtime`` imports the daemon; command handlers, jobs and views see it only
through the narrow protocols of ``gateway.runtime.ports`` (docs/architecture.md)."""
