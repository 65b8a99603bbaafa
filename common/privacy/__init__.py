"""Differential privacy: accounting (pure maths over events), calibration, and the durable ledger."""
