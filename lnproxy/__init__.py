"""lnproxy: keep a Lightning node's peer connections alive without its keys."""

__version__ = "0.1.0.dev0"
