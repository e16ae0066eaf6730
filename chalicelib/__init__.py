"""Karpenter interruption-handling provisioner (kip)."""
