"""vtlstack: a zero-copy userspace transport stack over AF_XDP."""

from vtlstack.errors import VtlError

__all__ = ["VtlError", "__version__"]
__version__ = "0.1.0"
