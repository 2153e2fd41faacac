"""AgentFlow Payments server."""

__version__ = "0.1.0"
