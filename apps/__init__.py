"""Runnable applications built on the public API; installed as vtlstack.apps."""
