"""--persons: face descriptors, and the tracks and photos of one person linked."""
