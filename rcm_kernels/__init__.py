"""Triton kernels as plain functions; never imports rcm_registry."""
