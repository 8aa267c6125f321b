"""Declarative provider mappings: YAML files in, pure payload -> canonical event translation out."""
