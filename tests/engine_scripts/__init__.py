"""Toy model, data and launch script for the engine tests."""
