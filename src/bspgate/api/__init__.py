"""The `/v1` HTTP API for downstream apps and operators (Bearer API keys)."""
