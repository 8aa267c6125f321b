"""The store: raw payloads, events, contacts, outbox. All SQL of bspgate lives in this package."""
