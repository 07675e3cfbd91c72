"""Mosquitto configuration files shipped with moteseal.

``mosquitto.conf`` is the production config (TLS listener, persistence,
password and ACL files); ``local.conf`` is the loopback-only config that
``moteseal demo`` and the tests render into a scratch directory. The code
that manages accounts and renders configs is ``gateway.broker``.
"""
