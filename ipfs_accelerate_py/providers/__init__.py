"""Translation between the normalized types and each wire protocol (no sockets, no Ray)."""
