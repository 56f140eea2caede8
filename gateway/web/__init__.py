"""``pmg web``: a small server-rendered console for the technician and the site supervisor.

A separate process (docs/web.md): it reads the database read-only and hands actions to the daemon
the way the CLI does (a payment marks ``policy_inbox``, a relay order queues a durable command); the
daemon never imports it.  Like ``gateway.cli`` it is a composition root above every other layer.
"""
