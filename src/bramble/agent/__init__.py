"""The node agent: drives this node's drivers until actual state matches desired state."""
