"""HTTP routes, split by concern: predictions, and health / model / metrics."""
