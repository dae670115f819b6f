"""Plumbing: engines move data between the server and the clients; algorithms do the math.

- `inprocess`: clients one after another in this process, one base model, adapters swapped.
"""
