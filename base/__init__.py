"""The ground floor every layer may use: errors that name a node's input (errors.py), the limits on
untrusted input (limits.py), and the one atomic-write helper (disk.py). It imports nothing of loragraph."""
