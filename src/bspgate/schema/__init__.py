"""The canonical event contract as a JSON Schema, and its validator."""
