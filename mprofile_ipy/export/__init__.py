"""Exporters: write and read profiles in formats other tools open."""
