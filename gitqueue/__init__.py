"""gitqueue: distributed bulk package builds coordinated through a shared git repository."""

__version__ = "0.1.0"
