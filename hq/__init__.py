"""The head office's side of the MQTT contract (docs/mqtt.md): consumers of what gateways publish.

It uses the gateway's contract and signing modules, and nothing of the running gateway; the gateway
never imports it (the CLI's ``pmg hq`` commands are its only door).
"""
