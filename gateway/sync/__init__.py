"""Head-office synchronisation: the transactional outbox and the MQTT client that drains it."""
