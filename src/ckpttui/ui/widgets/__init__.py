"""Widgets of the ckpttui app."""
