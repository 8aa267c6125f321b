"""Webhook ingress: verify the provider's credential, parse, hand over to the pipeline."""
