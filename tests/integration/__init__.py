"""Fixtures that start real outside servers (dovecot, …) on loopback ports
for the integration tier of the tests (marker ``integration``)."""
