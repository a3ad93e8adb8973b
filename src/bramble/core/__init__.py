"""Domain logic: operations (validate, act with undo, emit an event), errors, services."""
