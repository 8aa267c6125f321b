"""bspgate: one clean WhatsApp event stream from every Business Solution Provider."""

__version__ = "0.1.0"
