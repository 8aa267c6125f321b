"""Outbound delivery of canonical events to subscribers: sign, send, retry, dead-letter."""
