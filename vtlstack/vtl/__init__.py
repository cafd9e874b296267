"""The Virtual Transport Layer: negotiated protocol grafts run as eBPF KTFs."""
