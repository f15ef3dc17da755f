"""Screens of the ckpttui app."""
