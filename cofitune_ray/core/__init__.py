"""The pure search core: nodes (the part of the model a node trains), search spaces, the tree.

No Ray and no torch are imported here (tests/test_layout.py checks it), so the search logic runs and
is tested on its own.
"""
