"""The audit log: the event stream stored and queried."""
