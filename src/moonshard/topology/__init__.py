"""Topologies: how workers are placed (threads, processes), supervised and reached."""
