"""Model specs, the zoo, and building models with their weights."""
