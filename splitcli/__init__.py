"""splitreason: a small and a large reasoning model solving one problem together."""

__version__ = "0.1.0"
