"""Core layer: definitions, validation limits and the one numeric kernel of every formula."""
