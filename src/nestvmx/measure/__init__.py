"""Measurement: the cost model (modeled cycles from counted events) and reports."""
