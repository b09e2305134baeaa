"""Helpers every layer above the bottom one may use: network addresses (network.py), devices
(device.py). They import nothing from ``sglang`` but the bottom layer."""
