"""consensus-filter: B1 and B2 must agree, confidently, before a sample becomes training data."""
