"""The Textual app: renders what the core computes; holds no format knowledge."""
