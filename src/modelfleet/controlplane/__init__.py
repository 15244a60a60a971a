"""The SageMaker control plane served on the admin listener (docs/control-plane.md)."""
